"""Custom resource types of group thrifty.dev, version v1alpha1."""

from .base import API_VERSION, GROUP, VERSION, Condition, Resource, SecretKeyRef
from .batchqueue import BatchQueue, BatchQueueSpec, BatchQueueStatus
from .cachepolicy import CachePolicy, CachePolicySpec, CachePolicyStatus
from .distilledmodel import DistilledModel, DistilledModelSpec, DistilledModelStatus
from .llmgateway import LLMGateway, LLMGatewaySpec, LLMGatewayStatus

RESOURCES: tuple[type[Resource], ...] = (LLMGateway, CachePolicy, BatchQueue, DistilledModel)
BY_KIND: dict[str, type[Resource]] = {r.kind_name: r for r in RESOURCES}

__all__ = [
    "API_VERSION",
    "BY_KIND",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "BatchQueue",
    "BatchQueueSpec",
    "BatchQueueStatus",
    "CachePolicy",
    "CachePolicySpec",
    "CachePolicyStatus",
    "Condition",
    "DistilledModel",
    "DistilledModelSpec",
    "DistilledModelStatus",
    "LLMGateway",
    "LLMGatewaySpec",
    "LLMGatewayStatus",
    "Resource",
    "SecretKeyRef",
]
