"""Analysis: keep/promote decisions, noise floor, hardware effects, effects and interactions, stop rule, cost."""
