"""The downstream RL task named by ``rl_task.source``: reasoning-gym generators or a question/answer dataset."""

from __future__ import annotations


def build_downstream_task(task_cfg, tokenizer, split: str, seed: int, chat_template: bool = False):
    """``chat_template``: prompts are the user turn of the tokenizer's chat template (rollout.chat_template)."""
    if task_cfg.source == "reasoning_gym":
        from rpt.tasks.reasoning_gym_task import ReasoningGymTask

        return ReasoningGymTask(task_cfg, tokenizer, split, seed, chat_template)
    if task_cfg.source == "dataset":
        from rpt.tasks.qa_dataset_task import QADatasetTask

        return QADatasetTask(task_cfg, tokenizer, split, seed, chat_template)
    raise ValueError(f"rl_task.source must be reasoning_gym or dataset, got {task_cfg.source!r}")
