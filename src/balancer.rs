//! Picks the color of each request in proportion to the configured weights: at random, or
//! from a sticky client's bucket.

use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngExt};

use crate::config::BUCKETS;

/// The weighted choice over the configured colors, by position in their list. Built once at
/// startup: weights only change through a rolling update, which starts a new process.
#[derive(Debug, Clone)]
pub struct Balancer {
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
        }
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
