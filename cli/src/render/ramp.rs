//! A canary's planned ramp on one line, the current share marked.

use coalmine_client::types::CanaryView;

/// `ramp       1 → [2] → 4 → … → 100 %, 60 s healthy at each share`: the
/// current share in brackets; one set by hand off the plan is shown where
/// it falls, marked `(by hand)`.
pub(super) fn line(c: &CanaryView) -> String {
    let mut shares: Vec<String> = c.steps.iter().map(|s| s.to_string()).collect();
    match c.step_index.map(|i| i as usize) {
        Some(i) if i < shares.len() => shares[i] = format!("[{}]", shares[i]),
        _ => {
            let at = c.steps.iter().take_while(|s| **s < c.percent).count();
            shares.insert(at, format!("[{} by hand]", c.percent));
        }
    }
    format!(
        "ramp       {} %, {} s healthy at each share; promoted after the last\n",
        shares.join(" → "),
        c.bake_seconds
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(percent: f64, steps: &[f64], step_index: Option<u32>) -> CanaryView {
        CanaryView {
            version: "v2".into(),
            cluster: "heart-v2".into(),
            percent,
            steps: steps.to_vec(),
            step_index,
            next_step_percent: None,
            bake_seconds: 60,
            started_at: 0,
            step_since: 0,
            paused: false,
        }
    }

    #[test]
    fn the_current_share_is_marked_on_the_plan() {
        let steps = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 100.0];
        assert_eq!(
            line(&canary(4.0, &steps, Some(2))),
            "ramp       1 → 2 → [4] → 8 → 16 → 32 → 64 → 100 %, 60 s healthy at each share; promoted after the last\n"
        );
        assert!(line(&canary(5.0, &steps, None)).contains("4 → [5 by hand] → 8"));
        assert!(line(&canary(0.5, &steps, None)).contains("ramp       [0.5 by hand] → 1 →"));
        assert!(line(&canary(12.5, &[20.0, 50.0, 100.0], Some(9))).contains("[12.5 by hand] → 20"));
    }
}
