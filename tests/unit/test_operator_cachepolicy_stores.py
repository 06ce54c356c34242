"""The CachePolicy handler's stores when a layer is turned off, and its finalizer on a spec
that no longer validates (the real API server is in the e2e tests)."""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import kopf
import pytest

from tests.unit.fake_kube import FakeKube as BaseKube
from tests.unit.fake_kube import Key
from tests.unit.test_operator_builders import example
from thrifty_core.api import CachePolicy
from thrifty_operator.apply import KubeError
from thrifty_operator.builders import cache, names
from thrifty_operator.builders.common import Owner
from thrifty_operator.builders.defaults import Defaults
from thrifty_operator.handlers import cachepolicy
from thrifty_operator.handlers.common import Context
from thrifty_operator.handlers.indexes import BATCHQUEUES, CACHEPOLICIES, Indexes
from thrifty_operator.settings import OperatorSettings

QDRANT = ("StatefulSet", "default-cache-qdrant")
CLAIM = ("PersistentVolumeClaim", "storage-default-cache-qdrant-0")


class FakeKube(BaseKube):
    """Objects by (kind, name), with the parts of the StatefulSet controller and the garbage
    collector these tests rely on: the controller makes the Qdrant's claim and owns it while
    `whenDeleted` is Delete (`controllers()`); a deleted object's dependents go unless another
    of their owners exists. A partial apply as another field manager merges into the object
    (its claim owner references: that manager's own; its annotations)."""

    def __init__(self) -> None:
        super().__init__()
        self.applied: list[tuple[Key, str]] = []
        self.uids = 0

    def merged(
        self, old: dict[str, Any] | None, manifest: dict[str, Any], manager: str
    ) -> dict[str, Any]:
        self.applied.append((self.key(manifest), manager))
        if old is None:
            self.uids += 1
            new = deepcopy(manifest)
            new["metadata"]["uid"] = f"uid-{self.uids}"
        elif manager == self.field_manager:
            new = {**deepcopy(manifest), "metadata": {**old["metadata"], **manifest["metadata"]}}
            if "status" in old:  # (an apply never writes the status; a new spec is a generation)
                new["status"] = old["status"]
            changed = old.get("spec") != manifest.get("spec")
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + changed
        else:
            new = deepcopy(old)
            for field, value in manifest.get("spec", {}).items():
                new["spec"][field] = deepcopy(value)
            refs = [r for r in new["metadata"].get("ownerReferences", []) if r.get("by") != manager]
            for ref in manifest["metadata"].get("ownerReferences", []):
                refs.append({**ref, "by": manager})
            new["metadata"]["ownerReferences"] = refs
            annotations = manifest["metadata"].get("annotations")
            if annotations:
                new["metadata"]["annotations"] = {
                    **new["metadata"].get("annotations", {}),
                    **annotations,
                }
        return new

    async def delete(self, _api: str, kind: str, _ns: str, name: str) -> bool:
        gone = self.objects.get((kind, name))
        if not await super().delete(_api, kind, _ns, name) or gone is None:
            return False
        live = {o["metadata"].get("uid") for o in self.objects.values()} | {"uid-cachepolicy"}
        for key, obj in list(self.objects.items()):
            refs = obj["metadata"].get("ownerReferences") or []
            if any(r["uid"] == gone["metadata"]["uid"] for r in refs):
                if not any(r["uid"] in live for r in refs):
                    del self.objects[key]
                else:  # a dangling reference is dropped
                    obj["metadata"]["ownerReferences"] = [r for r in refs if r["uid"] in live]
        return True

    def controllers(self) -> None:
        """The StatefulSet controller's pass over the Qdrant and its claim."""
        sts = self.objects.get(QDRANT)
        if sts is None:
            return
        claim = self.objects.setdefault(CLAIM, {"kind": CLAIM[0], "metadata": {"name": CLAIM[1]}})
        refs = [
            r
            for r in claim["metadata"].get("ownerReferences", [])
            if r.get("kind") != "StatefulSet"
        ]
        if sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete":
            uid = sts["metadata"]["uid"]
            refs.append({"kind": "StatefulSet", "uid": uid, "controller": True})
        claim["metadata"]["ownerReferences"] = refs


def context(kube: FakeKube) -> Any:
    return Context(kube, Defaults(), OperatorSettings())  # type: ignore[arg-type]


async def reconcile(kube: FakeKube, body: dict[str, Any]) -> dict[str, dict[str, str]]:
    """One reconcile, then the StatefulSet controller's pass."""
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    outcome = await cachepolicy.reconcile(body, ix, context(kube))
    kube.controllers()
    return {c.type: {"reason": c.reason, "message": c.message} for c in outcome.conditions}


def policy(deletion: str = "Delete") -> dict[str, Any]:
    body = example("cachepolicy")
    body["spec"]["deletionPolicy"] = deletion
    return body


def owners(kube: FakeKube) -> set[str]:
    return {str(r.get("kind")) for r in kube.objects[CLAIM]["metadata"]["ownerReferences"]}


@pytest.mark.parametrize("deletion", ["Delete", "Retain"])
async def test_turning_the_semantic_layer_off_keeps_qdrants_data(deletion: str) -> None:
    """The Qdrant goes (StatefulSet, Service, NetworkPolicy), its volume claim stays: with
    deletionPolicy Delete the StatefulSet owned the claim (whenDeleted: Delete), and deleting
    it used to delete the data while the policy still existed. Turned on again, the new
    StatefulSet finds the same claim."""
    kube = FakeKube()
    body = policy(deletion)
    await reconcile(kube, body)
    await reconcile(kube, body)
    assert kube.objects[QDRANT]["spec"]["replicas"] == 1
    assert owners(kube) == ({"StatefulSet", "CachePolicy"} if deletion == "Delete" else set())
    body["spec"]["semantic"]["enabled"] = False
    conds = await reconcile(kube, body)
    assert QDRANT not in kube.objects
    assert CLAIM in kube.objects  # the data
    assert owners(kube) == ({"CachePolicy"} if deletion == "Delete" else set())
    assert ("Service", "default-cache-qdrant") in kube.deleted
    assert ("NetworkPolicy", "default-cache-qdrant") in kube.deleted
    assert "releases its volume" not in conds["StoreReady"]["message"]
    body["spec"]["semantic"]["enabled"] = True
    await reconcile(kube, body)
    assert QDRANT in kube.objects and CLAIM in kube.objects


async def test_an_off_layers_volume_goes_with_the_policy_under_delete_only() -> None:
    """The claim kept when the layer went off follows deletionPolicy when the policy goes,
    also when deletionPolicy changes afterwards."""
    kube = FakeKube()
    body = policy("Delete")
    await reconcile(kube, body)
    body["spec"]["semantic"]["enabled"] = False
    await reconcile(kube, body)
    assert owners(kube) == {"CachePolicy"}
    body["spec"]["deletionPolicy"] = "Retain"
    await reconcile(kube, body)
    assert owners(kube) == set()
    body["spec"]["deletionPolicy"] = "Delete"
    await reconcile(kube, body)
    assert owners(kube) == {"CachePolicy"}


async def test_retain_set_as_the_layer_goes_off_waits_for_the_claim_to_be_released() -> None:
    """deletionPolicy Delete -> Retain in the same edit that turns the layer off: the live
    StatefulSet still owns the claim (whenDeleted: Delete) and the policy no longer does, so
    the StatefulSet is switched to Retain first, and deleted once its controller let go."""
    kube = FakeKube()
    body = policy("Delete")
    await reconcile(kube, body)
    kube.objects[CLAIM]["metadata"]["ownerReferences"] = [
        r for r in kube.objects[CLAIM]["metadata"]["ownerReferences"] if r["kind"] == "StatefulSet"
    ]  # (as an earlier operator left it: owned by the StatefulSet alone)
    body["spec"]["semantic"]["enabled"] = False
    body["spec"]["deletionPolicy"] = "Retain"
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    outcome = await cachepolicy.reconcile(body, ix, context(kube))
    conds = {c.type: c for c in outcome.conditions}
    assert QDRANT in kube.objects and CLAIM in kube.objects
    assert (QDRANT, cache.VOLUME_MANAGER) in kube.applied
    assert conds["StoreReady"].reason == "StoresProgressing"
    assert "releases its volume" in conds["StoreReady"].message
    kube.controllers()  # whenDeleted: Retain -> the controller takes its reference off
    await reconcile(kube, body)
    assert QDRANT not in kube.objects and CLAIM in kube.objects
    assert owners(kube) == set()


async def test_no_qdrant_is_made_for_a_policy_that_never_ran_one() -> None:
    kube = FakeKube()
    body = policy()
    body["spec"]["semantic"]["enabled"] = False
    conds = await reconcile(kube, body)
    assert QDRANT not in kube.objects and CLAIM not in kube.objects
    assert conds["CollectionReady"]["message"] == "the semantic layer is off"


async def test_someone_elses_statefulset_of_that_name_is_left_alone() -> None:
    kube = FakeKube()
    body = policy()
    body["spec"]["semantic"]["enabled"] = False
    theirs = {
        "kind": "StatefulSet",
        "metadata": {"name": QDRANT[1], "uid": "theirs"},
        "spec": {"replicas": 3, "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain"}},
    }
    kube.objects[QDRANT] = deepcopy(theirs)
    await reconcile(kube, body)
    assert kube.objects[QDRANT] == theirs


async def test_an_invalid_spec_at_deletion_warns_that_the_collection_may_remain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warned: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "warn", lambda _body, **kw: warned.append(kw))
    body = policy("Delete")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00+00:00"
    body["spec"]["scope"] = "nowhere"
    kube = FakeKube()
    await cachepolicy.delete_collection(body, context(kube))  # released: nothing to wait for
    assert not kube.objects  # no delete Job from a spec it cannot read
    (warning,) = warned
    assert warning["reason"] == "CollectionNotDeleted"
    assert "thrifty-shop-default-cache" in warning["message"]
    assert "may remain" in warning["message"]


def test_the_example_policy_runs_a_qdrant() -> None:
    """(The tests above start from it.)"""
    body = example("cachepolicy")
    assert cache.qdrant_runs(CachePolicy.model_validate(body))
    assert Owner.from_body(body).name == "default-cache"


def image(kube: FakeKube) -> str:
    containers = kube.objects[QDRANT]["spec"]["template"]["spec"]["containers"]
    return str(next(c["image"] for c in containers if c["name"] == "qdrant"))


async def reconciled(kube: FakeKube, body: dict[str, Any]) -> dict[str, Any]:
    """One reconcile, its status fields written back to the body as kopf does."""
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    outcome = await cachepolicy.reconcile(body, ix, context(kube))
    kube.controllers()
    body.setdefault("status", {}).update(outcome.fields)
    return outcome.fields


async def test_a_new_qdrant_runs_the_operators_default_image_and_keeps_it() -> None:
    """Qdrant's storage moves one minor version at a time: an operator upgrade (a new default)
    never moves a Qdrant that has data, also while its layer is off and its volume stays."""
    kube = FakeKube()
    body = policy()
    fields = await reconciled(kube, body)
    assert image(kube) == Defaults().qdrant_image == fields["qdrantImage"]
    upgraded = Context(kube, Defaults(qdrant_image="qdrant:v9.0.0"), OperatorSettings())  # type: ignore[arg-type]
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    await cachepolicy.reconcile(body, ix, upgraded)
    assert image(kube) == Defaults().qdrant_image
    body["spec"]["semantic"]["enabled"] = False
    fields = await reconciled(kube, body)
    assert QDRANT not in kube.objects and fields["qdrantImage"] == Defaults().qdrant_image
    body["spec"]["semantic"]["enabled"] = True
    await cachepolicy.reconcile(body, ix, upgraded)
    assert image(kube) == Defaults().qdrant_image  # the volume's version, not the new default


async def test_a_qdrant_of_an_earlier_operator_keeps_its_image() -> None:
    """No status field nor claim annotation yet: the StatefulSet's image, or, with only its
    volume left, the image every earlier operator ran."""
    kube = FakeKube()
    body = policy()
    await reconciled(kube, body)
    containers = kube.objects[QDRANT]["spec"]["template"]["spec"]["containers"]
    containers[0]["image"] = "docker.io/qdrant/qdrant:v1.13.6"
    body["status"] = {}
    fields = await reconciled(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.13.6" == fields["qdrantImage"]
    assert cache.claim_image(kube.objects[CLAIM]) == "docker.io/qdrant/qdrant:v1.13.6"
    del kube.objects[QDRANT]  # (the layer was off when the operator was upgraded)
    del kube.objects[CLAIM]["metadata"]["annotations"]
    body["status"] = {}
    fields = await reconciled(kube, body)
    assert image(kube) == cache.LEGACY_QDRANT_IMAGE == fields["qdrantImage"]


async def test_the_policys_own_image_upgrades_its_qdrant_and_stays_after() -> None:
    kube = FakeKube()
    body = policy()
    await reconciled(kube, body)
    body["spec"]["stores"]["qdrant"]["image"] = "docker.io/qdrant/qdrant:v1.19.0"
    fields = await reconciled(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.19.0" == fields["qdrantImage"]
    del body["spec"]["stores"]["qdrant"]["image"]
    upgraded = Context(kube, Defaults(qdrant_image="qdrant:v9.0.0"), OperatorSettings())  # type: ignore[arg-type]
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    outcome = await cachepolicy.reconcile(body, ix, upgraded)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.19.0" == outcome.fields["qdrantImage"]


async def test_the_running_image_wins_over_a_stale_status() -> None:
    """A reconcile that applied a new image and failed before writing its status leaves the
    old one recorded there: the StatefulSet says what wrote the volume last."""
    kube = FakeKube()
    body = policy()
    await reconciled(kube, body)
    containers = kube.objects[QDRANT]["spec"]["template"]["spec"]["containers"]
    containers[0]["image"] = "docker.io/qdrant/qdrant:v1.19.0"
    body["status"]["qdrantImage"] = "docker.io/qdrant/qdrant:v1.18.3"
    fields = await reconciled(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.19.0" == fields["qdrantImage"]


async def test_a_retained_volume_keeps_its_qdrant_version_when_the_policy_is_made_again() -> None:
    """deletionPolicy Retain, the policy deleted (its StatefulSet goes, its volume claim stays)
    and applied again under the same name by a newer operator: a new uid, no status, no
    StatefulSet. The claim says which Qdrant wrote it."""
    kube = FakeKube()
    body = policy("Retain")
    await reconciled(kube, body)
    await reconciled(kube, body)  # (the claim is made after the first: the next records)
    written_by = image(kube)
    assert cache.claim_image(kube.objects[CLAIM]) == written_by
    del kube.objects[QDRANT]  # the policy went, and its StatefulSet with it
    again = policy("Retain")
    again["metadata"]["uid"] = "uid-cachepolicy-again"
    upgraded = Context(kube, Defaults(qdrant_image="qdrant:v9.0.0"), OperatorSettings())  # type: ignore[arg-type]
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    outcome = await cachepolicy.reconcile(again, ix, upgraded)
    assert image(kube) == written_by == outcome.fields["qdrantImage"]
    # A policy with no volume left gets the new default.
    fresh = Context(FakeKube(), Defaults(qdrant_image="qdrant:v9.0.0"), OperatorSettings())  # type: ignore[arg-type]
    outcome = await cachepolicy.reconcile(policy("Retain"), ix, fresh)
    assert outcome.fields["qdrantImage"] == "qdrant:v9.0.0"


def roll_out(kube: FakeKube) -> None:
    """The StatefulSet controller rolled the Qdrant's spec (its generation) out, its pod
    ready."""
    sts = kube.objects[QDRANT]
    want = sts["spec"]["replicas"]
    sts["status"] = {
        "observedGeneration": sts["metadata"].get("generation", 1),
        "replicas": want,
        "readyReplicas": want,
        "updatedReplicas": want,
        "currentRevision": "r",
        "updateRevision": "r",
    }
    redis = kube.objects[("Deployment", "default-cache-redis")]
    redis["status"] = {
        "observedGeneration": redis["metadata"].get("generation", 1),
        "updatedReplicas": 1,
        "availableReplicas": 1,
    }


def set_image(kube: FakeKube, value: str) -> None:
    kube.objects[QDRANT]["spec"]["template"]["spec"]["containers"][0]["image"] = value


async def store_ready(kube: FakeKube, body: dict[str, Any]) -> tuple[str, str]:
    ix = Indexes({CACHEPOLICIES: {}, BATCHQUEUES: {}})
    outcome = await cachepolicy.reconcile(body, ix, context(kube))
    kube.controllers()
    body.setdefault("status", {}).update(outcome.fields)
    (cond,) = [c for c in outcome.conditions if c.type == "StoreReady"]
    return cond.reason, cond.message


async def test_an_older_qdrant_is_upgraded_one_minor_version_at_a_time() -> None:
    """upgrade: Automatic (the default). A Qdrant of an earlier operator (v1.16.3) moves to the
    default (v1.18.3) through v1.17.1, each step once the previous one has rolled out and its
    pod is ready; the store is not ready until it runs the default."""
    kube = FakeKube()
    body = policy()
    await reconciled(kube, body)
    set_image(kube, "docker.io/qdrant/qdrant:v1.16.3")
    body["status"] = {}
    reason, message = await store_ready(kube, body)  # not rolled out: no step yet
    assert image(kube) == "docker.io/qdrant/qdrant:v1.16.3"
    assert reason == "StoresProgressing"
    assert f"upgrading to {Defaults().qdrant_image} one minor version at a time" in message
    roll_out(kube)
    reason, message = await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1" == body["status"]["qdrantImage"]
    assert cache.claim_image(kube.objects[CLAIM]) == "docker.io/qdrant/qdrant:v1.17.1"
    assert reason == "StoresProgressing" and "now docker.io/qdrant/qdrant:v1.17.1" in message
    await store_ready(kube, body)  # the step has not rolled out: the next waits
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1"
    roll_out(kube)
    await store_ready(kube, body)
    assert image(kube) == Defaults().qdrant_image == body["status"]["qdrantImage"]
    roll_out(kube)
    reason, message = await store_ready(kube, body)
    assert image(kube) == Defaults().qdrant_image
    assert reason == "StoresAvailable" and "upgrading" not in message


async def test_a_manual_or_pinned_qdrant_is_not_upgraded_but_says_it_is_behind() -> None:
    kube = FakeKube()
    body = policy()
    body["spec"]["stores"]["qdrant"]["upgrade"] = "Manual"
    await reconciled(kube, body)
    set_image(kube, "docker.io/qdrant/qdrant:v1.16.3")
    body["status"] = {}
    roll_out(kube)
    reason, message = await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.16.3"
    roll_out(kube)
    reason, message = await store_ready(kube, body)
    assert reason == "StoresAvailable"
    assert "older than the operator's default" in message and "upgrade: Manual" in message
    body["spec"]["stores"]["qdrant"]["upgrade"] = "Automatic"
    body["spec"]["stores"]["qdrant"]["image"] = "docker.io/qdrant/qdrant:v1.16.3"
    reason, message = await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.16.3"
    assert reason == "StoresAvailable" and "stores.qdrant.image names it" in message


async def test_a_qdrant_newer_than_the_default_is_never_downgraded() -> None:
    kube = FakeKube()
    body = policy()
    await reconciled(kube, body)
    set_image(kube, "docker.io/qdrant/qdrant:v1.19.0")
    roll_out(kube)
    reason, message = await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.19.0"
    assert reason == "StoresAvailable" and "qdrant:" in message and "upgrad" not in message


async def test_a_step_is_recorded_on_the_volume_before_it_is_applied() -> None:
    """A pass that fails after the StatefulSet took a step (here the Qdrant's NetworkPolicy
    apply) must not leave the claim naming the Qdrant before it: re-made from the claim (the
    layer off and on again, a Retain policy applied again), the Qdrant would open data a newer
    one wrote. The next step waits until the claim records the one that runs."""
    kube = FailingKube()
    body = policy()
    await reconciled(kube, body)
    set_image(kube, "docker.io/qdrant/qdrant:v1.16.3")
    body["status"] = {}
    await store_ready(kube, body)  # records v1.16.3, which runs
    roll_out(kube)
    kube.failing = "NetworkPolicy"
    with pytest.raises(KubeError):
        await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1"
    assert cache.claim_image(kube.objects[CLAIM]) == "docker.io/qdrant/qdrant:v1.17.1"
    # A claim that records an older Qdrant than the one running (an earlier operator's, or
    # one edited by hand): no step until the pass that records what runs.
    kube.failing = ""
    roll_out(kube)
    kube.objects[CLAIM]["metadata"]["annotations"][cache.QDRANT_IMAGE_ANNOTATION] = "x:v1.16.3"
    await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1"
    assert cache.claim_image(kube.objects[CLAIM]) == "docker.io/qdrant/qdrant:v1.17.1"
    roll_out(kube)
    await store_ready(kube, body)
    assert image(kube) == Defaults().qdrant_image


class FailingKube(FakeKube):
    """Applies of one kind of the Qdrant's objects fail (a 500 from the API server)."""

    failing = ""

    async def apply(
        self, manifest: dict[str, Any], field_manager: str | None = None
    ) -> dict[str, Any]:
        if self.key(manifest) == (self.failing, QDRANT[1]):
            raise KubeError(500, "the API server failed")
        return await super().apply(manifest, field_manager)


async def stepped_to_v1_17(kube: FakeKube) -> dict[str, Any]:
    """A policy whose Qdrant of an earlier operator (v1.16.3) took its first step."""
    body = policy()
    await reconciled(kube, body)
    set_image(kube, "docker.io/qdrant/qdrant:v1.16.3")
    body["status"] = {}
    await store_ready(kube, body)
    roll_out(kube)
    await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1"
    return body


async def test_a_step_whose_pod_cannot_start_says_why() -> None:
    """The StatefulSet of a step whose image the mirror lacks only says that no replica is
    ready; the store's condition says what its pod waits for (StoresFailing), and no further
    step is taken. Once the pod runs, the upgrade goes on."""
    kube = FakeKube()
    body = await stepped_to_v1_17(kube)
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "q:v1.17.1"'}
    kube.objects[("Pod", "default-cache-qdrant-0")] = {
        "metadata": {"name": "default-cache-qdrant-0"},
        "status": {"containerStatuses": [{"name": "qdrant", "state": {"waiting": waiting}}]},
    }
    reason, message = await store_ready(kube, body)
    assert reason == "StoresFailing"
    assert "pod default-cache-qdrant-0: container qdrant ImagePullBackOff" in message
    assert "now docker.io/qdrant/qdrant:v1.17.1" in message
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1"
    del kube.objects[("Pod", "default-cache-qdrant-0")]
    roll_out(kube)
    reason, message = await store_ready(kube, body)
    assert image(kube) == Defaults().qdrant_image
    assert reason == "StoresProgressing" and "ImagePullBackOff" not in message


async def test_a_role_that_cannot_read_pods_only_loses_the_detail() -> None:
    """An operator run with a role granted before it read pods (403) reconciles as before."""
    kube = PodlessKube()
    body = policy()
    await reconciled(kube, body)
    reason, message = await store_ready(kube, body)
    assert reason == "StoresProgressing" and "0/1 replicas ready" in message
    assert kube.refused


class PodlessKube(FakeKube):
    refused = 0

    async def get(self, api: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        if kind == "Pod":
            self.refused += 1
            raise KubeError(403, 'pods "x" is forbidden')
        return await super().get(api, kind, ns, name)


async def test_a_step_rolled_out_during_a_pass_leaves_the_store_not_ready() -> None:
    """The StatefulSet is read twice in a pass: to choose the image, and for the store's state.
    A step that rolls out between the two reads is taken in the next pass; this one must not
    say the store is ready (the e2e test once saw Ready on v1.17.1, one step short)."""
    kube = RacingKube()
    body = await stepped_to_v1_17(kube)
    kube.reads = 0
    kube.roll_out_at = 2  # rolled out after the pass chose the image
    reason, message = await store_ready(kube, body)
    assert image(kube) == "docker.io/qdrant/qdrant:v1.17.1"
    assert reason == "StoresProgressing" and "upgrading" in message
    kube.roll_out_at = 0
    await store_ready(kube, body)
    assert image(kube) == Defaults().qdrant_image
    roll_out(kube)
    reason, _ = await store_ready(kube, body)
    assert reason == "StoresAvailable"


class RacingKube(FakeKube):
    """Rolls the Qdrant out on the `roll_out_at`-th read of its StatefulSet in a pass."""

    reads = 0
    roll_out_at = 0

    async def get(self, api: str, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        if (kind, name) == QDRANT:
            self.reads += 1
            if self.reads == self.roll_out_at:
                roll_out(self)
        return await super().get(api, kind, ns, name)


async def test_the_last_step_rolled_out_in_its_own_pass_reads_as_done() -> None:
    """The StatefulSet rolls the last step out before the pass that applied it reads its
    state: the store is ready, and its condition does not say it is upgrading."""
    kube = RacingKube()
    body = policy()
    await reconciled(kube, body)
    set_image(kube, "docker.io/qdrant/qdrant:v1.17.1")
    body["status"] = {}
    await store_ready(kube, body)
    roll_out(kube)
    kube.reads, kube.roll_out_at = 0, 2  # applied v1.18.3, then read rolled out
    reason, message = await store_ready(kube, body)
    assert image(kube) == Defaults().qdrant_image
    assert reason == "StoresAvailable" and "upgrading" not in message


async def test_a_managed_redis_its_controller_reports_stuck_fails_the_store() -> None:
    """Its pods cannot be created (a quota, a refused pod spec): `StoresFailing`, a Warning
    with the controller's words, not `StoresProgressing` (a Normal event) for ever."""
    kube = FakeKube()
    body = policy()
    await reconcile(kube, body)
    redis = kube.objects[("Deployment", names.redis(body["metadata"]["name"]))]
    redis["status"] = {
        "conditions": [
            {
                "type": "ReplicaFailure",
                "status": "True",
                "message": 'pods "r-1" is forbidden: exceeded quota: compute',
            }
        ]
    }
    conds = await reconcile(kube, body)
    assert conds["StoreReady"]["reason"] == "StoresFailing"
    assert "exceeded quota" in conds["StoreReady"]["message"]
