"""The downstream RL task named by ``rl_task.source``: reasoning-gym generators or a question/answer dataset."""

from __future__ import annotations

from rpt.reward.answer import THINK, AnswerFormat


def build_downstream_task(task_cfg, tokenizer, split: str, seed: int, chat_template: bool = False,
                          answer: AnswerFormat = THINK):
    """``chat_template``: prompts are the user turn of the tokenizer's chat template (rollout.chat_template);
    ``answer``: where responses state their answer (rollout.answer_format)."""
    if task_cfg.source == "reasoning_gym":
        from rpt.tasks.reasoning_gym_task import ReasoningGymTask

        return ReasoningGymTask(task_cfg, tokenizer, split, seed, chat_template, answer)
    if task_cfg.source == "dataset":
        from rpt.tasks.qa_dataset_task import QADatasetTask

        return QADatasetTask(task_cfg, tokenizer, split, seed, chat_template, answer)
    raise ValueError(f"rl_task.source must be reasoning_gym or dataset, got {task_cfg.source!r}")
