//! Pure: a node's desired network plumbing towards its peers — routes (host-gw), VXLAN
//! FDB and neighbour entries, the masquerade ruleset — as functions of the Node objects.
