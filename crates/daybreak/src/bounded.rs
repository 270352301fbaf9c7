//! Tables keyed by what clients send (a MAC, an address) are bounded. When one is full, the
//! eighth of it seen longest ago goes at once: the cost per insert stays constant (a scan per
//! insert would make a flood of made-up MACs quadratic).

use std::collections::HashMap;
use std::hash::Hash;

/// Makes room for `key` in `map` (at most `cap` entries): when it is full and `key` is new, the
/// eighth of the entries whose `age` is smallest (the oldest) is removed.
pub fn make_room<K: Copy + Eq + Hash, V, A: Ord + Copy>(
    map: &mut HashMap<K, V>,
    key: &K,
    cap: usize,
    age: impl Fn(&V) -> A,
) {
    if map.len() < cap || map.contains_key(key) {
        return;
    }
    let mut by_age: Vec<(A, K)> = map.iter().map(|(k, v)| (age(v), *k)).collect();
    let n = (cap / 8).max(1).min(by_age.len());
    by_age.select_nth_unstable_by(n - 1, |a, b| a.0.cmp(&b.0));
    for (_, k) in &by_age[..n] {
        map.remove(k);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_eighth_goes_and_the_rest_stays() {
        let mut m: HashMap<u32, u64> = (0..64).map(|i| (i, i as u64)).collect();
        make_room(&mut m, &1000, 64, |v| *v);
        assert_eq!(m.len(), 56);
        assert!((0..8).all(|i| !m.contains_key(&i)) && (8..64).all(|i| m.contains_key(&i)));
        // Not full, or a key it holds: nothing goes.
        make_room(&mut m, &2000, 64, |v| *v);
        make_room(&mut m, &10, 56, |v| *v);
        assert_eq!(m.len(), 56);
    }
}
