"""The reinforce stage (GRPO on closed-form items, after the train stage): the closed-form items (data), the rewards
(rewards), GRPO's memory estimate and plan (memory), the trainer (grpo), and what the notebook shows (report)."""
