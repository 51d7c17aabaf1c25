"""The rollout policy's rules beyond the per-site cap and the failure threshold: waves
(staged rollout) live here, and the dispatcher (jobs_app.dispatch) asks this module which
pending deliveries may be claimed now."""
