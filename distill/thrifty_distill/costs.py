"""The change of cost structure a student brings: a one-off training cost and a serving cost
(per hour of its Deployment) against the teacher spend it replaces, and the break-even point
in requests and days at the observed traffic. Pure arithmetic, all in USD.
"""

from __future__ import annotations

from typing import Any


def cost_structure(
    *,
    teacher_cost_per_request: float,
    coverage: float,
    requests_per_day: float,
    training_seconds: float,
    node_price_per_hour: float,
    serving_cost_per_hour: float,
    evaluation_sample_rate: float = 0.0,
) -> dict[str, Any]:
    """Costs per day at the observed traffic and the break-even point of the training run.

    Student answers still pay the teacher for the continuous-evaluation sample; requests the
    student leaves to the teacher cost what they cost before.
    """
    training_cost = training_seconds / 3600 * node_price_per_hour
    teacher_per_day = teacher_cost_per_request * requests_per_day
    replaced_per_day = teacher_per_day * coverage
    evaluation_per_day = replaced_per_day * evaluation_sample_rate
    serving_per_day = serving_cost_per_hour * 24
    net_per_day = replaced_per_day - evaluation_per_day - serving_per_day
    net_per_request = net_per_day / requests_per_day if requests_per_day > 0 else 0.0
    if net_per_day > 0:
        break_even_days: float | None = training_cost / net_per_day
        break_even_requests: float | None = training_cost / net_per_request
    else:
        break_even_days = break_even_requests = None
    return {
        "teacher_cost_per_request_usd": teacher_cost_per_request,
        "requests_per_day": round(requests_per_day, 2),
        "coverage": round(coverage, 5),
        "training_seconds": round(training_seconds, 3),
        "training_cost_usd": round(training_cost, 6),
        "teacher_spend_per_day_usd": round(teacher_per_day, 6),
        "replaced_teacher_spend_per_day_usd": round(replaced_per_day, 6),
        "evaluation_spend_per_day_usd": round(evaluation_per_day, 6),
        "serving_cost_per_day_usd": round(serving_per_day, 6),
        "net_saving_per_day_usd": round(net_per_day, 6),
        "net_saving_per_request_usd": net_per_request,
        "expected_saving_share": round(net_per_day / teacher_per_day, 5)
        if teacher_per_day
        else 0.0,
        "break_even_requests": None if break_even_requests is None else round(break_even_requests),
        "break_even_days": None if break_even_days is None else round(break_even_days, 4),
        "pays_off": net_per_day > 0,
    }
