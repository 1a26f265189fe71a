"""Wiring, in every deployment form (`incept up`, docker compose, each
Kubernetes overlay with the trainer Jobs its gateway launches): every rq queue
something enqueues to has a consumer, and every address a process is
configured to reach (Redis, TF Serving gRPC/REST, the gateway, health checks,
Services, Ingress, published ports) is served by a process listening there.
The forms are read from what deploys them (wiring.py); the producers table is
checked against the code, the consumers come from the workers' own tables."""

from __future__ import annotations

import copy

import pytest
from deploy_support import OVERLAYS, REPO
from wiring import (
    PRODUCERS,
    Form,
    compose_form,
    consumes,
    enqueues_in,
    k8s_form,
    local_form,
    produces,
    reaches,
    split_address,
)

import incept.queues as queues

FORMS = ("local", "compose", *(f"k8s/{o}" for o in OVERLAYS))
QUEUES = {getattr(queues, n) for n in dir(queues) if n.endswith("_QUEUE")}


@pytest.fixture(scope="module")
def forms(rendered, templates, compose, tmp_path_factory) -> dict[str, Form]:
    out = {"local": local_form(tmp_path_factory.mktemp("wiring") / "var"),
           "compose": compose_form(compose)}
    for overlay in OVERLAYS:
        out[f"k8s/{overlay}"] = k8s_form(overlay, rendered[overlay], templates[overlay])
    return out


def unconsumed(form: Form) -> dict[str, list[str]]:
    """queue -> who enqueues to it, for queues no process of the form consumes."""
    consumed = set().union(*(consumes(p) for p in form.procs))
    producers = {q: [p.where for p in form.procs if q in produces(p)] for q in QUEUES}
    return {q: who for q, who in producers.items() if who and q not in consumed}


def unserved(form: Form) -> list[str]:
    problems = []
    for proc in form.procs:
        for what, address in reaches(proc):
            if not form.serving(*split_address(address), proc):
                problems.append(f"{proc.where} reaches {what} at {address}: nothing listens there")
    for what, address in form.entries:
        if not form.serving(*split_address(address), None):
            problems.append(f"{what} ({address}): nothing listens there")
    return problems


@pytest.mark.parametrize("name", FORMS)
def test_every_queue_something_enqueues_to_has_a_consumer(forms, name):
    assert unconsumed(forms[name]) == {}, f"{name}: queues nobody consumes (uploads or jobs would wait forever)"


@pytest.mark.parametrize("name", FORMS)
def test_every_address_a_process_reaches_is_served(forms, name):
    assert unserved(forms[name]) == []


@pytest.mark.parametrize("name", FORMS)
def test_every_form_runs_the_whole_job_path(forms, name):
    """Uploads are converted, jobs trained, checkpoints evaluated: each queue is
    produced and consumed (k8s trains in Jobs, so nothing there needs `train`)."""
    form = forms[name]
    produced = set().union(*(produces(p) for p in form.procs))
    consumed = set().union(*(consumes(p) for p in form.procs))
    needed = {queues.DATASETS_QUEUE, queues.EVAL_QUEUE}
    if not name.startswith("k8s"):
        needed.add(queues.TRAIN_QUEUE)
    assert needed <= produced & consumed, name
    commands = {p.command for p in form.procs}
    assert {"gateway", "evaluator"} <= commands, name
    assert ("train" if name.startswith("k8s") else "trainer") in commands, name


def test_the_producers_table_is_what_the_code_enqueues():
    """Every module of incept/ and services/ that enqueues (through incept.queues'
    enqueue functions or Queue(...).enqueue) is in wiring.PRODUCERS with its queue."""
    found = {}
    for path in sorted([*REPO.glob("incept/**/*.py"), *REPO.glob("services/**/*.py")]):
        rel = path.relative_to(REPO).as_posix()
        if rel != "incept/queues.py" and enqueues_in(path):
            found[rel] = enqueues_in(path)
    assert found == {module: {queue} for module, (_, queue, _) in PRODUCERS.items()}, (
        "a module enqueues that tests/deploy/wiring.py does not know: add it to PRODUCERS")


def test_the_check_sees_a_missing_consumer_and_a_wrong_address(forms):
    """The checks fail when the wiring is broken (what today's k8s had: nobody on `datasets`)."""
    k8s = forms["k8s/dev"]
    no_converter = Form(k8s.name, [p for p in k8s.procs if p.command != "converter"], k8s.serving,
                        k8s.entries)
    assert set(unconsumed(no_converter)) == {queues.DATASETS_QUEUE}
    compose = forms["compose"]
    procs = copy.deepcopy(compose.procs)
    gateway = next(p for p in procs if p.command == "gateway")
    gateway.env["INCEPT_TFSERVING_GRPC"] = "tfserving:9500"
    gateway.env["INCEPT_REDIS_URL"] = "redis://cache:6379/0"
    problems = unserved(Form("compose", procs, compose.serving, compose.entries))
    assert len(problems) == 2 and all(p.startswith("compose/gateway") for p in problems), problems
    local = forms["local"]
    no_evaluator = Form("local", [p for p in local.procs if p.command != "evaluator"], local.serving,
                        local.entries)
    assert set(unconsumed(no_evaluator)) == {queues.EVAL_QUEUE}
