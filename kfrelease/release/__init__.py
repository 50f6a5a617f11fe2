"""Release: the shadow accuracy gate in staging and the gradual rollout with automatic rollback."""
