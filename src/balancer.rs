//! Picks the color of each request in proportion to the configured weights.

use rand::distr::weighted::WeightedIndex;
use rand::{Rng, RngExt};

/// The weighted choice over the configured colors, by position in their list. Built once at
/// startup: weights only change through a rolling update, which starts a new process.
#[derive(Debug, Clone)]
pub struct Balancer {
    /// `None` when nothing can be picked.
    index: Option<WeightedIndex<u32>>,
}

impl Balancer {
    pub fn new(weights: impl IntoIterator<Item = u32>) -> Balancer {
        // Fails only for an empty list or all-zero weights; config rejects the latter, and both
        // mean "nothing to pick".
        Balancer {
            index: WeightedIndex::new(weights).ok(),
        }
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
