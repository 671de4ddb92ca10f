//! Pure: the smallest transaction that turns one [`Table`] into another — the generic
//! incremental path for tables whose desired state is cheap to build whole (the policy
//! table; the services proxy keeps its own per-port diff because at 50k services even
//! building the whole table per change is too slow).
//!
//! What changes how:
//! - a set or map's elements: deleted and added by key (a map element whose data changed
//!   is deleted and re-added in the same transaction: nf_tables refuses to overwrite it);
//! - a regular chain whose rules changed: flushed and refilled (atomic inside the
//!   transaction: no packet sees it empty);
//! - new sets and chains are added first, removed ones deleted last (sets, then chains),
//!   after every rule and element that could name them is gone;
//! - anything nf_tables cannot change in place (a set's declaration, a base chain's hook,
//!   the table's family) makes the result a whole-table replace
//!   ([`Transaction::replace_table`]), which is atomic too.
//!
//! Invariant: applying `diff_tables(old, new)` to a kernel holding exactly `old` leaves
//! exactly `new`; when `old == new` the transaction is empty (nothing is sent).

use std::collections::{BTreeMap, HashMap};

use crate::ir::{Chain, ElemData, Element, Op, Rule, Set, Table, Transaction, Value};

/// The transaction that turns `old` into `new` (see the module doc).
pub fn diff_tables(old: &Table, new: &Table) -> Transaction {
    if old.family != new.family || old.name != new.name {
        return Transaction::replace_table(new);
    }
    let old_sets: BTreeMap<&str, &(Set, Vec<Element>)> =
        old.sets.iter().map(|s| (s.0.name.as_str(), s)).collect();
    let old_chains: BTreeMap<&str, &(Chain, Vec<Rule>)> =
        old.chains.iter().map(|c| (c.0.name.as_str(), c)).collect();
    let redeclared = new
        .sets
        .iter()
        .any(|(s, _)| old_sets.get(s.name.as_str()).is_some_and(|(o, _)| o != s))
        || new
            .chains
            .iter()
            .any(|(c, _)| old_chains.get(c.name.as_str()).is_some_and(|(o, _)| o != c));
    if redeclared {
        return Transaction::replace_table(new);
    }

    let mut tx = Transaction::new(new.family, new.name.clone());
    let mut adds = Vec::new();
    let mut rules = Vec::new();
    let mut flushes = Vec::new();
    let mut deletes = Vec::new();
    for (set, elems) in &new.sets {
        match old_sets.get(set.name.as_str()) {
            None => {
                tx.push(Op::AddSet(set.clone()));
                if !elems.is_empty() {
                    adds.push(Op::AddElements {
                        set: set.name.clone(),
                        elems: elems.clone(),
                    });
                }
            }
            Some((_, before)) => {
                let (gone, added) = element_changes(before, elems);
                if !gone.is_empty() {
                    deletes.push(Op::DeleteElements {
                        set: set.name.clone(),
                        elems: gone,
                    });
                }
                if !added.is_empty() {
                    adds.push(Op::AddElements {
                        set: set.name.clone(),
                        elems: added,
                    });
                }
            }
        }
    }
    for (chain, chain_rules) in &new.chains {
        match old_chains.get(chain.name.as_str()) {
            None => {
                tx.push(Op::AddChain(chain.clone()));
                rules.extend(add_rules(chain, chain_rules));
            }
            Some((_, before)) if before != chain_rules => {
                flushes.push(Op::FlushChain(chain.name.clone()));
                rules.extend(add_rules(chain, chain_rules));
            }
            Some(_) => {}
        }
    }
    let new_chains: HashMap<&str, ()> = new
        .chains
        .iter()
        .map(|(c, _)| (c.name.as_str(), ()))
        .collect();
    let new_sets: HashMap<&str, ()> = new
        .sets
        .iter()
        .map(|(s, _)| (s.name.as_str(), ()))
        .collect();
    let gone_chains: Vec<&(Chain, Vec<Rule>)> = old
        .chains
        .iter()
        .filter(|(c, _)| !new_chains.contains_key(c.name.as_str()))
        .collect();
    for (c, r) in &gone_chains {
        if !r.is_empty() {
            flushes.push(Op::FlushChain(c.name.clone()));
        }
    }
    // Element deletions first (they may name chains about to go), then flushes (rules may
    // name sets and chains about to go), new rules, new elements, and the removals.
    tx.ops.extend(deletes);
    tx.ops.extend(flushes);
    tx.ops.extend(rules);
    tx.ops.extend(adds);
    // Removed sets before removed chains: a removed verdict map's elements may still name
    // a removed chain (the kernel refuses to delete a chain something jumps to).
    tx.ops.extend(
        old.sets
            .iter()
            .filter(|(s, _)| !new_sets.contains_key(s.name.as_str()))
            .map(|(s, _)| Op::DeleteSet(s.name.clone())),
    );
    tx.ops.extend(
        gone_chains
            .iter()
            .map(|(c, _)| Op::DeleteChain(c.name.clone())),
    );
    tx
}

fn add_rules<'a>(chain: &'a Chain, rules: &'a [Rule]) -> impl Iterator<Item = Op> + 'a {
    rules.iter().map(|r| Op::AddRule {
        chain: chain.name.clone(),
        rule: r.clone(),
    })
}

/// (elements to delete, elements to add) between two element lists, by key.
fn element_changes(before: &[Element], after: &[Element]) -> (Vec<Element>, Vec<Element>) {
    let old: HashMap<&[Value], Option<&ElemData>> = before
        .iter()
        .map(|e| (e.key.as_slice(), e.data.as_ref()))
        .collect();
    let new: HashMap<&[Value], Option<&ElemData>> = after
        .iter()
        .map(|e| (e.key.as_slice(), e.data.as_ref()))
        .collect();
    let gone = before
        .iter()
        .filter(|e| new.get(e.key.as_slice()) != Some(&e.data.as_ref()))
        .cloned()
        .collect();
    let added = after
        .iter()
        .filter(|e| old.get(e.key.as_slice()) != Some(&e.data.as_ref()))
        .cloned()
        .collect();
    (gone, added)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{Expr, Family, SetData, Stmt, Type, Verdict};
    use std::net::Ipv4Addr;

    fn table(elems: &[(u8, &str)], chains: &[(&str, u16)]) -> Table {
        let mut t = Table::new(Family::Ip, "t");
        let mut m = Set::map("m", vec![Type::Ipv4Addr], SetData::Verdict);
        m.comment = None;
        let elems = elems
            .iter()
            .map(|(k, c)| {
                Element::verdict(
                    vec![Value::Ipv4(Ipv4Addr::new(10, 0, 0, *k))],
                    Verdict::Goto((*c).into()),
                )
            })
            .collect();
        t.sets.push((m, elems));
        for (name, port) in chains {
            t.chains.push((
                Chain::regular(*name),
                vec![Rule::new(vec![
                    Stmt::Match {
                        expr: Expr::ThDport,
                        op: crate::ir::CmpOp::Eq,
                        value: Value::Port(*port),
                    },
                    Stmt::Verdict(Verdict::Accept),
                ])],
            ));
        }
        t
    }

    #[test]
    fn same_table_sends_nothing() {
        let t = table(&[(1, "a")], &[("a", 80)]);
        assert!(diff_tables(&t, &t).is_empty());
    }

    #[test]
    fn changes_are_ordered_so_every_name_exists_when_used() {
        let old = table(&[(1, "a"), (2, "b")], &[("a", 80), ("b", 81)]);
        let new = table(&[(1, "c"), (3, "a")], &[("a", 80), ("c", 82)]);
        let tx = diff_tables(&old, &new);
        let kinds: Vec<String> = tx
            .ops
            .iter()
            .map(|op| match op {
                Op::AddChain(c) => format!("add chain {}", c.name),
                Op::DeleteElements { elems, .. } => format!("del {} elems", elems.len()),
                Op::FlushChain(c) => format!("flush {c}"),
                Op::AddRule { chain, .. } => format!("rule {chain}"),
                Op::AddElements { elems, .. } => format!("add {} elems", elems.len()),
                Op::DeleteChain(c) => format!("delete chain {c}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "add chain c",
                "del 2 elems", // 10.0.0.1 (data changed) and 10.0.0.2 (gone)
                "flush b",
                "rule c",
                "add 2 elems", // 10.0.0.1 → c, 10.0.0.3 → a
                "delete chain b",
            ]
        );
    }

    #[test]
    fn a_changed_declaration_replaces_the_table() {
        let old = table(&[(1, "a")], &[("a", 80)]);
        let mut new = old.clone();
        new.sets[0].0.flags.interval = true;
        let tx = diff_tables(&old, &new);
        assert!(matches!(tx.ops[..2], [Op::AddTable, Op::DeleteTable]));
    }

    #[test]
    fn changed_rules_flush_and_refill_only_that_chain() {
        let old = table(&[], &[("a", 80), ("b", 81)]);
        let new = table(&[], &[("a", 80), ("b", 90)]);
        let tx = diff_tables(&old, &new);
        assert_eq!(tx.ops.len(), 2, "{:?}", tx.ops);
        assert_eq!(tx.ops[0], Op::FlushChain("b".into()));
    }
}
