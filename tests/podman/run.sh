#!/usr/bin/env bash
# podman-on-podnet: podnet's container image is built from `Containerfile`, its
# `install-cni` puts the plugin in a CNI plugin directory, and podman (CNI network
# backend) runs two containers on a podnet network with that plugin; they reach each
# other by IP.
#
#   sudo PODNET_IMAGE_BIN=target/image/podnet tests/podman/run.sh
#   (scripts/build-image --binary-only makes target/image/podnet)
#
# Needs root and the Debian packages podman, runc, busybox-static,
# containernetworking-plugins, iproute2, binutils, nftables, openssl, kubernetes-client
# (kubectl) (and util-linux, coreutils, diffutils). Prints progress lines and, on success,
# exactly one line "podman-on-podnet: 1 passed, 0 failed" (the last); on failure
# "podman-on-podnet: FAIL: <reason>" and exit status 1. A run takes ~10 s.
#
# What it checks: `podman build -f Containerfile` with the static binary as the context
# gives an image whose whole file system is the one file /podnet, under 40 MB; the image
# runs (`--version`); `podman run -v DIR:/host/opt/cni/bin IMAGE install-cni` leaves in
# DIR an executable `podnet` identical to the binary and nothing else; the agent run from
# the image as the DaemonSet runs it (capabilities, read-only root, in-cluster API access
# over HTTPS with a service account token and CA) against `podnet apiserver` from the
# image gets healthy, writes its conflist and programs its nf_tables table. The installed copy is the plugin for the rest. Then podman starts two containers on the network "podnet" (plugin type
# "podnet"), each gets an address in 10.88.77.0/24 from podnet's IPAM, each fetches a
# page naming the other from the other's IP over HTTP, and after `podman rm -f` podnet's
# IPAM table no longer holds their addresses and no veth is left.
#
# Isolation (root on a shared machine):
# - The host's network namespace is never touched. The script creates its own namespace
#   (pn-podman-PID) and runs every podman command under `nsenter --net=` into it, so the
#   plugin builds its bridge and host-side veths there, and the containers' traffic never
#   leaves it. (Not `ip netns exec`: it remounts /sys, which breaks podman's cgroup
#   handling.) The containers' own namespaces are made by podman (/run/netns/netns-UUID)
#   and removed by it; the script removes any it leaves behind.
# - All podman state lives in one temporary directory: containers.conf (CONTAINERS_CONF),
#   storage.conf (CONTAINERS_STORAGE_CONF, vfs driver), --root/--runroot/--tmpdir, the
#   network config dir, file locks instead of /dev/shm/libpod_lock, the events log, runc's
#   state (a wrapper adds --root; /run/runc otherwise) and podnet's IPAM table.
# - Containers (and conmon) get the cgroup parent /pn-podman-PID instead of
#   /libpod_parent; the script removes those cgroup directories.
# - `podman import`, `podman build` and the image's `podman run --rm`s run in a private
#   mount namespace with a tmpfs over /var/lib, because containers/image writes
#   /var/lib/containers/cache for root whatever --root says. kubectl's cache is under the
#   temporary directory (--cache-dir).
# - libcni's result cache is fixed at /var/lib/cni/results (podman 4.3 has no setting).
#   libcni deletes its entries on DEL; the script deletes any of its containers' entries
#   left over, and the directories if they did not exist before.
# - Everything is undone on exit, also on failure or interrupt: containers, processes
#   (only those whose command line names the temporary directory or that live in the
#   script's cgroup parent, killed by PID), mounts under the temporary directory, cgroups,
#   the namespace, the directory.
#
# Environment:
#   PODNET_IMAGE_BIN  the static podnet binary the image is built from (default:
#                     target/image/podnet of this repo, from scripts/build-image)
#   PODNET_CNI_TRACE  1 = put a logging shim in front of the plugin and print every CNI
#                     call podman made (verb, stdin, stdout, stderr, exit status)
#   KEEP_TMP          1 = keep the temporary directory (for debugging; it is printed)
#   TMPDIR            where the temporary directory goes (default /tmp; not noexec)
set -Eeuo pipefail

TEST=podman-on-podnet
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PODNET_IMAGE_BIN=${PODNET_IMAGE_BIN:-$REPO/target/image/podnet}
PODNET_IMAGE=localhost/podnet:test
IMAGE_MAX_BYTES=$((40 * 1000 * 1000))
NET=podnet
BRIDGE=pn-pm0
SUBNET=10.88.77.0/24
SUBNET_PREFIX=10.88.77.
# The conflist's cniVersion. podman 4.3 vendors libcni 1.1.x, whose newest version is
# 1.0.0: with "1.1.0" the plugin's ADD succeeds but podman fails with
# `plugin type="podnet" failed (add): unsupported CNI result version "1.1.0"` (and calls
# DEL). So 1.0.0 is the highest that works.
CNI_VERSION=1.0.0
IMAGE=localhost/podnet-busybox:test
PODMAN_TIMEOUT=120 # seconds, per podman command

NS=pn-podman-$$
CGROUP_PARENT=/pn-podman-$$
WORK=
NS_CREATED=0
declare -a NEW_DIRS=() # of /var/lib/cni, /var/lib/cni/results: those this run created
TRACE_SHOWN=0

say() { printf '%s: %s\n' "$TEST" "$*"; }
die() {
    printf '%s: FAIL: %s\n' "$TEST" "$*"
    exit 1
}

show_trace() {
    if [[ ${PODNET_CNI_TRACE:-0} == 1 && $TRACE_SHOWN == 0 && -f $WORK/cni-trace.log ]]; then
        TRACE_SHOWN=1
        say "CNI calls made by podman:"
        cat "$WORK/cni-trace.log"
    fi
}

# ---------------------------------------------------------------------------- cleanup
pm() { "$WORK/podman.sh" "$@"; }

# Processes started (directly or via podman/conmon/runc) by this run: those whose command
# line names $WORK (podman, conmon, runc) or that live in our cgroup parent (containers).
# Only these PIDs are ever signalled.
our_pids() {
    local p cmd cg
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        [[ $p == "$$" || $p == "$BASHPID" ]] && continue
        cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
        cg=$(cat "/proc/$p/cgroup" 2>/dev/null) || cg=
        if [[ $cmd == *"$WORK/"* || $cg == *":$CGROUP_PARENT/"* ]]; then
            echo "$p"
        fi
    done
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM HUP ERR
    local ids=() sandboxes=() id sb
    if [[ -n $WORK && -x $WORK/podman.sh && $NS_CREATED == 1 ]]; then
        mapfile -t ids < <(timeout -k 5 30 "$WORK/podman.sh" ps -a -q --no-trunc 2>/dev/null)
        for id in "${ids[@]}"; do
            sandboxes+=("$(timeout -k 5 30 "$WORK/podman.sh" inspect \
                --format '{{.NetworkSettings.SandboxKey}}' "$id" 2>/dev/null)")
        done
        if ((${#ids[@]})); then
            say "cleanup: removing containers"
            timeout -k 5 60 "$WORK/podman.sh" rm -a -f -t 0 >/dev/null 2>&1 ||
                say "cleanup: WARNING: podman rm -a -f failed"
        fi
    fi
    show_trace
    if [[ -n $WORK && -d $WORK ]]; then
        local pids
        pids=$(our_pids)
        if [[ -n $pids ]]; then
            say "cleanup: killing leftover processes" $pids
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null
            sleep 0.5
        fi
        # Container namespaces podman did not remove.
        for sb in "${sandboxes[@]}"; do
            if [[ $sb == /run/netns/* && -e $sb ]]; then
                say "cleanup: removing leftover container netns $sb"
                ip netns del "${sb#/run/netns/}" 2>/dev/null || { umount -l "$sb"; rm -f "$sb"; }
            fi
        done
        # Mounts under $WORK (a container's /dev/shm tmpfs, …), deepest first.
        local m
        while read -r m; do
            [[ -n $m ]] && { umount -l "$m" 2>/dev/null || say "cleanup: WARNING: cannot unmount $m"; }
        done < <(awk -v w="$WORK/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r)
    fi
    # libcni's result cache: our containers' entries, then the directories we made.
    for id in "${ids[@]}"; do
        [[ -n $id ]] && rm -f /var/lib/cni/results/"$NET-$id-"*
    done
    local i
    for ((i = ${#NEW_DIRS[@]} - 1; i >= 0; i--)); do
        rmdir "${NEW_DIRS[i]}" 2>/dev/null
    done
    # Cgroups: runc removes each container's; the parent and conmon's stay.
    local h d
    for h in /sys/fs/cgroup/*/; do
        d=$h${CGROUP_PARENT#/}
        [[ -d $d ]] || continue
        for i in 1 2 3 4 5; do # processes just killed may take a moment to leave
            find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
            [[ -d $d ]] || break
            sleep 0.2
        done
        [[ ! -d $d ]] || say "cleanup: WARNING: cannot remove cgroup $d"
    done
    if [[ $NS_CREATED == 1 ]]; then
        ip netns del "$NS" 2>/dev/null || say "cleanup: WARNING: cannot delete netns $NS"
    fi
    if [[ -n $WORK && -d $WORK ]]; then
        if [[ ${KEEP_TMP:-0} == 1 ]]; then
            say "cleanup: keeping $WORK"
        else
            rm -rf --one-file-system "$WORK" 2>/dev/null || say "cleanup: WARNING: cannot remove $WORK"
        fi
    fi
    if [[ $rc != 0 ]]; then
        echo "$TEST: 0 passed, 1 failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'die "interrupted"' INT TERM HUP
trap 'die "command failed (line $LINENO): $BASH_COMMAND"' ERR

# ---------------------------------------------------------------------------- preflight
[[ $(id -u) == 0 ]] || die "must run as root (rootful podman with CNI, network namespaces)"
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found: install the Debian package '$2'"
}
need podman podman
need conmon conmon
need runc runc
need ip iproute2
need readelf binutils
need nft nftables
need openssl openssl
need cmp diffutils
need nsenter util-linux
need unshare util-linux
need timeout coreutils
[[ -x /bin/busybox ]] || die "/bin/busybox not found: install the Debian package 'busybox-static'"
/bin/busybox true 2>/dev/null || die "/bin/busybox does not run"
if command -v ldd >/dev/null && ldd /bin/busybox >/dev/null 2>&1; then
    die "/bin/busybox is dynamically linked: install 'busybox-static' instead of 'busybox'"
fi
[[ -x /usr/lib/cni/loopback ]] ||
    die "/usr/lib/cni/loopback not found: install the Debian package 'containernetworking-plugins'"
[[ -x $PODNET_IMAGE_BIN && -f $PODNET_IMAGE_BIN ]] ||
    die "podnet binary '$PODNET_IMAGE_BIN' not found or not executable (scripts/build-image --binary-only makes it; or set PODNET_IMAGE_BIN)"
PODNET_IMAGE_BIN=$(readlink -f "$PODNET_IMAGE_BIN")
if readelf -l "$PODNET_IMAGE_BIN" | grep -q 'program interpreter' ||
    ! readelf -h "$PODNET_IMAGE_BIN" | grep -q 'Type: *EXEC'; then
    die "$PODNET_IMAGE_BIN is not static and position-dependent: the image needs scripts/build-image's build"
fi
say "podman $(podman --version | awk '{print $NF}'), runc $(runc --version | awk 'NR==1{print $NF}'), image binary $PODNET_IMAGE_BIN"

# ---------------------------------------------------------------------------- setup
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pn-podman.XXXXXX") # must not be noexec
chmod 755 "$WORK"
mkdir -p "$WORK"/{bin,cni-bin,cni-install,image-context,net.d,ipam,storage,run,tmp,rootfs}
# The plugin podman runs: the copy podnet's image installs (below).
PODNET_BIN=$WORK/cni-install/podnet
for d in /var/lib/cni /var/lib/cni/results; do
    [[ -e $d ]] || NEW_DIRS+=("$d")
done

ip netns add "$NS"
NS_CREATED=1
say "created network namespace $NS; state in $WORK"

# runc keeps its state in --root (default /run/runc); podman passes none, the wrapper does.
cat >"$WORK/bin/runc" <<EOF
#!/bin/sh
exec $(command -v runc) --root $WORK/runc-state "\$@"
EOF
chmod 755 "$WORK/bin/runc"

# The plugin, found as "podnet" in cni_plugin_dirs.
if [[ ${PODNET_CNI_TRACE:-0} == 1 ]]; then
    cat >"$WORK/cni-bin/podnet" <<EOF
#!/bin/bash
# Logging shim: records each CNI call, then answers with the real plugin's output.
in=\$(cat)
out=\$(printf '%s' "\$in" | "$PODNET_BIN" 2>"$WORK/cni-stderr.\$\$"); rc=\$?
{ echo "=== \$(date +%T.%N) CNI_COMMAND=\$CNI_COMMAND CNI_CONTAINERID=\$CNI_CONTAINERID CNI_IFNAME=\$CNI_IFNAME CNI_NETNS=\$CNI_NETNS CNI_ARGS=\$CNI_ARGS exit=\$rc"
  echo "--- stdin:  \$in"; echo "--- stdout: \$out"; echo "--- stderr: \$(cat "$WORK/cni-stderr.\$\$")"
} >>"$WORK/cni-trace.log"
rm -f "$WORK/cni-stderr.\$\$"
[ -z "\$out" ] || printf '%s\n' "\$out"
exit \$rc
EOF
    chmod 755 "$WORK/cni-bin/podnet"
else
    ln -s "$PODNET_BIN" "$WORK/cni-bin/podnet"
fi

cat >"$WORK/net.d/$NET.conflist" <<EOF
{
  "cniVersion": "$CNI_VERSION",
  "name": "$NET",
  "plugins": [
    {
      "type": "podnet",
      "bridge": "$BRIDGE",
      "ipam": {
        "ranges": [[{"subnet": "$SUBNET"}]],
        "dataDir": "$WORK/ipam"
      }
    }
  ]
}
EOF

# runtime "runc": crun refuses this machine's hybrid cgroup setup.
cat >"$WORK/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[network]
network_backend = "cni"
cni_plugin_dirs = ["$WORK/cni-bin", "/usr/lib/cni"]
network_config_dir = "$WORK/net.d"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/tmp/events.log"
lock_type = "file"
tmp_dir = "$WORK/tmp"
image_copy_tmp_dir = "$WORK/tmp"
static_dir = "$WORK/storage/libpod"
volume_path = "$WORK/storage/volumes"

[engine.runtimes]
runc = ["$WORK/bin/runc"]
EOF

cat >"$WORK/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
EOF

cat >"$WORK/registries.conf" <<'EOF'
unqualified-search-registries = []
EOF

# Every podman command: inside our namespace, with only our configuration.
cat >"$WORK/podman.sh" <<EOF
#!/bin/sh
exec timeout -k 10 $PODMAN_TIMEOUT nsenter --net=/run/netns/$NS -- \\
  env CONTAINERS_CONF=$WORK/containers.conf \\
      CONTAINERS_STORAGE_CONF=$WORK/storage.conf \\
      CONTAINERS_REGISTRIES_CONF=$WORK/registries.conf \\
      TMPDIR=$WORK/tmp \\
  podman --root $WORK/storage --runroot $WORK/run --tmpdir $WORK/tmp \\
      --storage-driver vfs --cgroup-manager cgroupfs --events-backend file \\
      --runtime runc --network-config-dir $WORK/net.d "\$@"
EOF
chmod 755 "$WORK/podman.sh"

# ---------------------------------------------------------------------------- image
say "building image $IMAGE from /bin/busybox"
R=$WORK/rootfs
mkdir -p "$R"/{bin,sbin,etc,tmp,proc,sys,dev,run,www,root}
cp /bin/busybox "$R/bin/busybox"
for a in sh cat echo ls mkdir sleep hostname ip ping nc wget httpd timeout true false ps; do
    ln -s busybox "$R/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\n' >"$R/etc/group"
tar -C "$R" --numeric-owner -cf "$WORK/rootfs.tar" .
err=$(unshare --mount --propagation private -- sh -c \
    'mount -t tmpfs -o size=16m,mode=755 pn-podman-import /var/lib && exec "$@"' sh \
    "$WORK/podman.sh" import --quiet "$WORK/rootfs.tar" "$IMAGE" 2>&1 >/dev/null) ||
    die "podman import failed: $err"

# ---------------------------------------------------------------------------- podnet's image
# Built and run as a cluster would: the image from Containerfile, then its init container's
# command with the node's plugin directory mounted, read-only root, no capabilities.
# `podman build`/`run` of an image with no registry behind it write
# /var/lib/containers/cache like `import` does: the same private tmpfs.
in_private_var_lib() {
    unshare --mount --propagation private -- sh -c \
        'mount -t tmpfs -o size=16m,mode=755 pn-podman-build /var/lib && exec "$@"' sh "$@"
}
say "building $PODNET_IMAGE from $REPO/Containerfile"
cp "$PODNET_IMAGE_BIN" "$WORK/image-context/podnet"
err=$(in_private_var_lib "$WORK/podman.sh" build --quiet -f "$REPO/Containerfile" \
    -t "$PODNET_IMAGE" "$WORK/image-context" 2>&1 >/dev/null) ||
    die "podman build -f Containerfile failed: $err"
mnt=$(pm image mount "$PODNET_IMAGE" 2>&1) || die "podman image mount failed: $mnt"
files=$(cd "$mnt" && find . -mindepth 1 | sort | tr '\n' ' ')
pm image unmount "$PODNET_IMAGE" >/dev/null 2>&1 || true
[[ $files == "./podnet " ]] || die "the image holds more than /podnet: $files"
size=$(pm image inspect --format '{{.Size}}' "$PODNET_IMAGE") || die "podman image inspect failed"
((size < IMAGE_MAX_BYTES)) || die "the image is $size bytes, over $IMAGE_MAX_BYTES"
say "image $PODNET_IMAGE: one file (/podnet), $size bytes"
ver=$(in_private_var_lib "$WORK/podman.sh" run --rm --network none \
    --cgroup-parent "$CGROUP_PARENT" "$PODNET_IMAGE" --version 2>&1) ||
    die "podman run $PODNET_IMAGE --version failed: $ver"
[[ $ver == "podnet "* ]] || die "podman run $PODNET_IMAGE --version said '$ver'"
say "podman run $PODNET_IMAGE --version: $ver"
out=$(in_private_var_lib "$WORK/podman.sh" run --rm --network none --read-only --cap-drop all \
    --user 0 --cgroup-parent "$CGROUP_PARENT" -v "$WORK/cni-install:/host/opt/cni/bin" \
    "$PODNET_IMAGE" install-cni 2>&1) || die "podman run $PODNET_IMAGE install-cni failed: $out"
say "podman run $PODNET_IMAGE install-cni: $out"
installed=$(ls -A "$WORK/cni-install" | tr '\n' ' ')
[[ $installed == "podnet " ]] || die "install-cni left '$installed' in the plugin directory"
[[ -x $PODNET_BIN ]] || die "install-cni left $PODNET_BIN not executable"
cmp -s "$PODNET_IMAGE_BIN" "$PODNET_BIN" || die "the installed $PODNET_BIN differs from the image's binary"
say "installed plugin $PODNET_BIN: executable, identical to the image's /podnet"

# The agent from the image, as the DaemonSet runs it: host network (here: our namespace),
# read-only root, no capabilities but NET_ADMIN and SYS_ADMIN, the CNI config directory
# mounted, in-cluster API access (KUBERNETES_SERVICE_HOST/PORT, the service account's
# token and CA mounted where a pod has them: HTTPS with a bearer token, the CA from the
# mount — the image has no trust store). The control plane is the image too (`podnet
# apiserver` with a TLS certificate for 127.0.0.1 and a token file). The agent must get
# healthy, write the conflist and program its nf_tables masquerade table — over netlink:
# the image has no `nft`.
nsenter --net="/run/netns/$NS" sh -c 'ip link set lo up && echo 1 >/proc/sys/net/ipv4/ip_forward'
mkdir -p "$WORK/agent-net.d" "$WORK/pki" "$WORK/sa"
(
    cd "$WORK/pki"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 1 -subj /CN=pn-podman-ca
    openssl req "${ec[@]}" -keyout srv.key -out srv.csr -subj /CN=kube-apiserver
    printf 'subjectAltName=IP:127.0.0.1\n' >san.ext
    openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt \
        -days 1 -extfile san.ext
) >"$WORK/pki/openssl.log" 2>&1 || die "openssl: $(cat "$WORK/pki/openssl.log")"
TOKEN=pn-podman-$RANDOM$RANDOM$RANDOM
printf '%s,system:serviceaccount:podnet-system:podnet-agent,agent-uid\n' "$TOKEN" >"$WORK/pki/tokens.csv"
cp "$WORK/pki/ca.crt" "$WORK/sa/ca.crt"
printf '%s' "$TOKEN" >"$WORK/sa/token"
printf 'podnet-system' >"$WORK/sa/namespace"
say "starting podnet apiserver (HTTPS, tokens) and podnet agent (in-cluster) from $PODNET_IMAGE"
err=$(pm run -d --name pn-apiserver --network host --read-only --cap-drop all \
    --cgroup-parent "$CGROUP_PARENT" -v "$WORK/pki:/pki:ro" "$PODNET_IMAGE" \
    apiserver --listen 127.0.0.1:6443 --tls-cert /pki/srv.crt --tls-key /pki/srv.key \
    --token-file /pki/tokens.csv 2>&1 >/dev/null) ||
    die "podman run $PODNET_IMAGE apiserver failed: $err"
KUBECTL=$(command -v kubectl) || die "kubectl not found (scripts/setup installs kubernetes-client)"
kc() { # kubectl against the apiserver, in our namespace, with the agent's token
    nsenter --net="/run/netns/$NS" timeout 20 "$KUBECTL" --server https://127.0.0.1:6443 \
        --certificate-authority "$WORK/pki/ca.crt" --token "$TOKEN" \
        --cache-dir "$WORK/kube-cache" "$@"
}
for i in $(seq 1 40); do kc get nodes >/dev/null 2>&1 && break; sleep 0.25; done
out=$(printf '%s' '{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-1"},"status":{"addresses":[{"type":"InternalIP","address":"127.0.0.1"}]}}' |
    kc create -f - 2>&1) || die "creating Node node-1 failed: $out"
err=$(pm run -d --name pn-agent --network host --read-only --cap-drop all \
    --cap-add NET_ADMIN --cap-add SYS_ADMIN --user 0 --cgroup-parent "$CGROUP_PARENT" \
    -e KUBERNETES_SERVICE_HOST=127.0.0.1 -e KUBERNETES_SERVICE_PORT=6443 -e NODE_NAME=node-1 \
    -v "$WORK/sa:/var/run/secrets/kubernetes.io/serviceaccount:ro" \
    -v "$WORK/agent-net.d:/etc/cni/net.d" "$PODNET_IMAGE" \
    agent --metrics-addr 127.0.0.1:9102 --cni-conf-dir /etc/cni/net.d 2>&1 >/dev/null) ||
    die "podman run $PODNET_IMAGE agent failed: $err"
healthz() { # 0 when the agent's /healthz answers 200 (HTTP/1.0 over bash's /dev/tcp)
    nsenter --net="/run/netns/$NS" timeout 3 bash -c '
        exec 3<>/dev/tcp/127.0.0.1/9102 || exit 1
        printf "GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
        head -c 12 <&3' 2>/dev/null | grep -q '^HTTP/1.. 200'
}
healthy=0
for i in $(seq 1 60); do
    healthz && { healthy=1; break; }
    sleep 0.25
done
((healthy)) || die "the agent from the image never got healthy: $(pm logs pn-agent 2>&1 | tail -5)"
[[ -f $WORK/agent-net.d/10-podnet.conflist ]] || die "the agent did not write its conflist"
nat=$(nsenter --net="/run/netns/$NS" nft list table ip podnet-nat 2>&1) ||
    die "no podnet-nat table after the agent from the image synced: $nat"
[[ $nat == *masquerade* ]] || die "the podnet-nat table has no masquerade rule: $nat"
tables=$(nsenter --net="/run/netns/$NS" nft list tables | tr '\n' ' ')
for t in podnet-services podnet-policy; do
    [[ $tables == *"table ip $t "* ]] || die "the agent from the image did not program table ip $t: $tables"
done
say "agent from the image: in-cluster over HTTPS, healthy, conflist written, tables ip podnet-nat, podnet-services, podnet-policy programmed"
err=$(pm rm -f -t 0 pn-agent pn-apiserver 2>&1 >/dev/null) || die "podman rm agent/apiserver failed: $err"
# What the agent programmed goes before the podman part (which needs none of it).
for t in podnet-nat podnet-services podnet-policy; do
    nsenter --net="/run/netns/$NS" nft delete table ip "$t"
done
left=$(ip -n "$NS" route show proto 201)
[[ -z $left ]] || die "the agent from the image left routes: $left"

nets=$(pm network ls --format '{{.Name}}' 2>"$WORK/net.err") ||
    die "podman network ls failed: $(cat "$WORK/net.err")"
grep -qx "$NET" <<<"$nets" ||
    die "podman does not list the network '$NET' of $WORK/net.d: $(cat "$WORK/net.err")"

# ---------------------------------------------------------------------------- containers
# Each serves one line naming itself (plus a per-run nonce) on :8080.
NONCE=$$-$RANDOM
serve() { echo "echo 'podnet-$1 $NONCE' >/www/index.html && exec httpd -f -p 8080 -h /www"; }

start() { # start NAME -> sets CID, IP
    local name=$1
    say "starting container $name on network $NET"
    CID=$(pm run -d --name "$name" --network "$NET" --cgroup-parent "$CGROUP_PARENT" \
        "$IMAGE" sh -c "$(serve "$name")" 2>"$WORK/run.err") ||
        die "podman run $name failed: $(cat "$WORK/run.err")"
    IP=$(pm inspect --format "{{(index .NetworkSettings.Networks \"$NET\").IPAddress}}" "$name") ||
        die "podman inspect $name failed"
    [[ $IP == "$SUBNET_PREFIX"* ]] || die "container $name got IP '$IP', not one in $SUBNET from podnet"
    say "container $name: id ${CID:0:12}, IP $IP"
}
start pn-a
CID_A=$CID IP_A=$IP
start pn-b
CID_B=$CID IP_B=$IP
[[ $IP_A != "$IP_B" ]] || die "both containers got $IP_A"

# The plugin's bridge (and the host ends of the veths) are in our namespace.
br=$(ip -n "$NS" -br -4 addr show "$BRIDGE" 2>/dev/null) || die "bridge $BRIDGE missing in netns $NS"
say "bridge in $NS: $(echo $br)"

# The container's own view of its interface.
addr_a=$(pm exec pn-a ip -4 -o addr show eth0) || die "'ip addr' in pn-a failed"
[[ $addr_a == *" $IP_A/24 "* ]] || die "pn-a's eth0 does not carry $IP_A/24: $addr_a"

# ---------------------------------------------------------------------------- traffic
fetch() { # fetch FROM TO_NAME TO_IP
    local from=$1 to=$2 ip=$3 want="podnet-$2 $NONCE" got= i
    for i in $(seq 1 20); do
        got=$(pm exec "$from" timeout 3 wget -q -O - "http://$ip:8080/" 2>&1) && break
        sleep 0.5
    done
    [[ $got == "$want" ]] || die "$from -> $to (http://$ip:8080/): expected '$want', got '$got'"
    say "$from -> $to (http://$ip:8080/): '$got'"
}
fetch pn-b pn-a "$IP_A"
fetch pn-a pn-b "$IP_B"

# ---------------------------------------------------------------------------- IPAM
TABLE=$WORK/ipam/$NET/allocations.json
[[ -f $TABLE ]] || die "podnet's IPAM table $TABLE does not exist"
entries() { # the table's "entries" object, on one line (no jq on CI machines)
    tr -d ' \n\t' <"$TABLE" | grep -o '"entries":{[^{}]*\({[^{}]*}[^{}]*\)*}' ||
        { echo "no \"entries\" object in $TABLE: $(cat "$TABLE")"; return 1; }
}
e=$(entries) || die "$e"
for pair in "$IP_A=$CID_A" "$IP_B=$CID_B"; do
    ip=${pair%%=*} cid=${pair#*=}
    [[ $e == *"\"$ip\":{\"containerID\":\"$cid\""* ]] ||
        die "IPAM table does not record $ip for container ${cid:0:12}: $e"
done
say "IPAM table holds $IP_A and $IP_B"

say "removing both containers (podman rm -f)"
err=$(pm rm -f -t 0 pn-a pn-b 2>&1 >/dev/null) || die "podman rm -f failed: $err"
e=$(entries) || die "$e"
for x in "$IP_A" "$IP_B" "$CID_A" "$CID_B"; do
    [[ $e != *"\"$x\""* ]] || die "after podman rm, the IPAM table still holds $x: $e"
done
say "IPAM table released both addresses: $e"
left=$(ip -n "$NS" -o link show type veth 2>&1) || die "ip link in $NS failed: $left"
[[ -z $left ]] || die "host-side veths left in $NS after podman rm: $left"
say "no veths left in $NS"

show_trace
echo "$TEST: 1 passed, 0 failed"
