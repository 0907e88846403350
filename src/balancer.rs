//! Picks the color of each request in proportion to the configured weights: at random, or
//! from a sticky client's bucket.

use std::sync::{Arc, RwLock, RwLockReadGuard};

use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngExt};

use crate::config::BUCKETS;

/// The weighted choice over the configured colors, by position in their list. Built at
/// startup, and again when a ramp's step or its guard changes a share.
#[derive(Debug, Clone)]
pub struct Balancer {
    weights: Vec<u32>,
    /// `None` when nothing can be picked.
    index: Option<WeightedIndex<u32>>,
    /// Where each color's slice of the buckets ends: the cumulative weights, in list order,
    /// scaled to BUCKETS. Every replica computes the same slices from the same weights, so a
    /// bucket means the same color everywhere with no shared state.
    bounds: Vec<u32>,
}

impl Balancer {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Balancer {
        let weights: Vec<u32> = weights.into_iter().collect();
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let mut cumulative = 0u64;
        let bounds = weights
            .iter()
            .map(|&w| {
                cumulative += u64::from(w);
                (u64::from(BUCKETS) * cumulative)
                    .checked_div(total)
                    .unwrap_or(0) as u32
            })
            .collect();
        // Fails only for an empty list or all-zero weights; config rejects the latter, and both
        // mean "nothing to pick".
        Balancer {
            index: WeightedIndex::new(&weights).ok(),
            bounds,
            weights,
        }
    }

    /// The weight of the color at `position` (0 when out of range).
    pub fn weight(&self, position: usize) -> u32 {
        self.weights.get(position).copied().unwrap_or(0)
    }

    /// The position of the color whose slice holds `bucket` (0..BUCKETS).
    pub fn for_bucket(&self, bucket: u32) -> Option<usize> {
        let i = self.bounds.partition_point(|&end| end <= bucket);
        (i < self.bounds.len()).then_some(i)
    }

    /// The position of the picked color; `None` when no color can take traffic.
    pub fn pick<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<usize> {
        Some(rng.sample(self.index.as_ref()?))
    }
}

/// A route's balancer: fixed, or replaced as a ramp moves (requests read the one in force).
#[derive(Debug)]
pub enum RouteBalancer {
    /// Read without a lock: most routes never change.
    Fixed(Balancer),
    Moving(Arc<Shared>),
}

impl RouteBalancer {
    pub fn read(&self) -> BalancerRef<'_> {
        match self {
            RouteBalancer::Fixed(b) => BalancerRef::Fixed(b),
            RouteBalancer::Moving(s) => BalancerRef::Moving(s.read()),
        }
    }
}

/// The balancer in force, for as long as it is held.
pub enum BalancerRef<'a> {
    Fixed(&'a Balancer),
    Moving(RwLockReadGuard<'a, Balancer>),
}

impl std::ops::Deref for BalancerRef<'_> {
    type Target = Balancer;

    fn deref(&self) -> &Balancer {
        match self {
            BalancerRef::Fixed(b) => b,
            BalancerRef::Moving(g) => g,
        }
    }
}

/// A balancer replaced as a ramp moves.
#[derive(Debug)]
pub struct Shared(RwLock<Balancer>);

impl Shared {
    pub fn new(balancer: Balancer) -> Shared {
        Shared(RwLock::new(balancer))
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Balancer> {
        // A writer only swaps a finished value in, so a poisoned lock still holds a whole one.
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set(&self, balancer: Balancer) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = balancer;
    }
}

/// The weights of a route with a ramped color at `position` holding `share` (0..=BUCKETS,
/// in buckets: 100 per percent): the rest is split among the other colors by `weights`, all
/// in buckets, so that the weights add up to BUCKETS. As the share rises the ramped color's
/// slice only grows at both ends, so a sticky bucket only ever moves to it, never back.
pub fn ramped_weights(weights: &[u32], position: usize, share: u32) -> Vec<u32> {
    let share = share.min(BUCKETS);
    let rest = u64::from(BUCKETS - share);
    let total: u64 = weights
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != position)
        .map(|(_, &w)| u64::from(w))
        .sum();
    let mut out: Vec<u32> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| match i {
            _ if i == position => share,
            _ => (rest * u64::from(w)).checked_div(total).unwrap_or(0) as u32,
        })
        .collect();
    // What flooring left over goes to the last other color with a weight.
    let given: u32 = out.iter().sum();
    if let Some(last) = (0..out.len())
        .rev()
        .find(|&i| i != position && weights[i] > 0)
    {
        out[last] += BUCKETS - given;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn counts(weights: &[u32], n: usize, seed: u64) -> Vec<usize> {
        let b = Balancer::new(weights.iter().copied());
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0; weights.len()];
        for _ in 0..n {
            counts[b.pick(&mut rng).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn nothing_to_pick() {
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(Balancer::new([]).pick(&mut rng), None);
        assert_eq!(Balancer::new([0, 0]).pick(&mut rng), None);
    }

    #[test]
    fn single_color_gets_everything() {
        assert_eq!(counts(&[3], 1000, 7), [1000]);
    }

    #[test]
    fn zero_weight_gets_nothing() {
        let c = counts(&[1, 0, 1], 10_000, 42);
        assert_eq!(c[1], 0);
        assert_eq!(c[0] + c[2], 10_000);
    }

    #[test]
    fn four_to_one_split() {
        // 20% of 100,000 with a 5-sigma margin (sigma = sqrt(n p (1-p)) ≈ 126); seeded, so it
        // cannot flake.
        let c = counts(&[4, 1], 100_000, 2024);
        assert_eq!(c[0] + c[1], 100_000);
        assert!((20_000 - 632..=20_000 + 632).contains(&c[1]), "{c:?}");
    }

    #[test]
    fn three_colors_follow_their_weights() {
        let c = counts(&[1, 2, 7], 100_000, 99);
        for (got, share) in c.iter().zip([0.1f64, 0.2, 0.7]) {
            let expected = 100_000.0 * share;
            let sigma = (100_000.0 * share * (1.0 - share)).sqrt();
            assert!((*got as f64 - expected).abs() < 5.0 * sigma, "{c:?}");
        }
    }

    #[test]
    fn buckets_follow_the_cumulative_weights() {
        let b = Balancer::new([9, 1]);
        assert_eq!(b.for_bucket(0), Some(0));
        assert_eq!(b.for_bucket(8999), Some(0));
        assert_eq!(b.for_bucket(9000), Some(1));
        assert_eq!(b.for_bucket(9999), Some(1));
        assert_eq!(b.for_bucket(10_000), None);
        // A zero weight owns no bucket.
        let b = Balancer::new([1, 0, 1]);
        assert!((0..BUCKETS).all(|k| b.for_bucket(k) != Some(1)));
        assert_eq!(Balancer::new([0, 0]).for_bucket(5), None);
    }

    /// Moving the canary from 10% to 20% moves only blue clients to green, never back.
    #[test]
    fn raising_a_share_moves_buckets_one_way_only() {
        let before = Balancer::new([90, 10]);
        let after = Balancer::new([80, 20]);
        let mut moved = 0;
        for k in 0..BUCKETS {
            match (before.for_bucket(k), after.for_bucket(k)) {
                (Some(x), Some(y)) if x == y => {}
                (Some(0), Some(1)) => moved += 1,
                other => panic!("bucket {k} moved {other:?}"),
            }
        }
        assert_eq!(moved, 1000);
    }

    /// Blue/green at any weights: raising one color's weight moves buckets only into it, and
    /// a weight of 0 moves all of that color's buckets to the other. (With three or more
    /// colors, slices in the middle shift too: that is the price of stateless slices.)
    #[test]
    fn one_way_property_over_all_buckets() {
        for blue in 0..=12u32 {
            for green in 0..=12u32 {
                if blue + green == 0 {
                    continue;
                }
                let before = Balancer::new([blue, green]);
                for (after, gainer) in [
                    (Balancer::new([blue + 3, green]), Some(0)),
                    (Balancer::new([blue, green + 3]), Some(1)),
                ] {
                    for k in 0..BUCKETS {
                        let (x, y) = (before.for_bucket(k), after.for_bucket(k));
                        assert!(
                            x == y || y == gainer,
                            "{blue}/{green}: bucket {k} {x:?} -> {y:?}"
                        );
                    }
                }
                if blue > 0 && green > 0 {
                    let no_green = Balancer::new([blue, 0]);
                    assert!((0..BUCKETS).all(|k| no_green.for_bucket(k) == Some(0)));
                }
            }
        }
    }

    #[test]
    fn ramped_weights_fill_the_buckets() {
        assert_eq!(ramped_weights(&[1, 1], 1, 1000), [9000, 1000]);
        assert_eq!(ramped_weights(&[5, 1], 0, 0), [0, 10_000]);
        assert_eq!(ramped_weights(&[1, 7, 2], 1, 2500), [2500, 2500, 5000]);
        assert_eq!(ramped_weights(&[1, 1, 1], 0, 0), [0, 5000, 5000]);
        assert_eq!(ramped_weights(&[1, 1, 1], 2, 0), [5000, 5000, 0]);
        assert_eq!(ramped_weights(&[1, 1, 1], 1, 1), [4999, 1, 5000]);
    }

    /// With the ramped color anywhere among two or three colors, raising its share never takes
    /// a bucket away from it; with two colors, the only buckets that move go to it. (With three,
    /// the stable colors' slices also shift between themselves, as weights do.)
    #[test]
    fn a_rising_ramp_only_gains_buckets() {
        for (weights, position) in [
            (vec![1u32, 1], 1usize),
            (vec![1, 1], 0),
            (vec![3, 1, 2], 1),
            (vec![1, 5, 1], 2),
            (vec![7, 0, 1], 0),
        ] {
            let mut before: Option<Balancer> = None;
            for share in (0..=BUCKETS).step_by(37).chain([BUCKETS]) {
                let w = ramped_weights(&weights, position, share);
                assert_eq!(w.iter().sum::<u32>(), BUCKETS, "{weights:?} {share}");
                let after = Balancer::new(w);
                if let Some(b) = &before {
                    for k in (0..BUCKETS).step_by(7) {
                        let (x, y) = (b.for_bucket(k), after.for_bucket(k));
                        let ok = if weights.len() == 2 {
                            x == y || y == Some(position)
                        } else {
                            x != Some(position) || y == Some(position)
                        };
                        assert!(ok, "{weights:?} share {share}: bucket {k} {x:?} -> {y:?}");
                    }
                }
                before = Some(after);
            }
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let b = Balancer::new([1, 1]);
        let seq = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..64)
                .map(|_| b.pick(&mut rng).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(seq(5), seq(5));
        assert_ne!(seq(5), seq(6));
    }
}
