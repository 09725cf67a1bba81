//! Stop strings over streamed text: text is released only once it can no longer be the start
//! of a stop string, and generation ends at the first complete match (which is not emitted).

pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

/// What one push released.
#[derive(Debug, PartialEq, Eq)]
pub struct Released {
    pub text: String,
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    pub fn push(&mut self, text: &str) -> Released {
        self.pending.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let text = self.pending[..at].to_string();
            self.pending.clear();
            return Released { text, stopped: true };
        }
        let keep = self.held_back();
        let text = self.pending[..self.pending.len() - keep].to_string();
        self.pending.drain(..self.pending.len() - keep);
        Released { text, stopped: false }
    }

    /// Whatever is still held when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of some stop string.
    fn held_back(&self) -> usize {
        let p = &self.pending;
        self.stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).find(|&n| p.ends_with(&s[..n])))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> StopMatcher {
        StopMatcher::new(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn holds_back_a_possible_prefix_then_releases_it() {
        let mut m = stops(&["END"]);
        assert_eq!(m.push("abc E"), Released { text: "abc ".into(), stopped: false });
        assert_eq!(m.push("x"), Released { text: "Ex".into(), stopped: false });
    }

    #[test]
    fn stops_across_pushes_without_emitting_the_stop() {
        let mut m = stops(&["\n\n", "END"]);
        assert_eq!(m.push("one E").text, "one ");
        assert_eq!(m.push("N"), Released { text: String::new(), stopped: false });
        assert_eq!(m.push("Dtwo"), Released { text: String::new(), stopped: true });
    }

    #[test]
    fn earliest_match_wins() {
        let mut m = stops(&["b", "a"]);
        assert_eq!(m.push("xab"), Released { text: "x".into(), stopped: true });
    }

    #[test]
    fn multibyte_stops_and_finish() {
        let mut m = stops(&["é!"]);
        assert_eq!(m.push("café"), Released { text: "caf".into(), stopped: false });
        assert_eq!(m.finish(), "é");
    }
}
