"""Linear refusal probes, the refusal cliff, suppression heads and the refusal direction
(``../shared/reference/refusal.md``; issue #12)."""
