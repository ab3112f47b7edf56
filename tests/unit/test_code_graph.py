"""Clean rooms, read from the source: no import cycles, layers that import downwards only."""

from __future__ import annotations

import ast

from code_graph import all_modules, cycles, imports, reachable


def test_no_import_cycles():
    assert cycles() == []


def test_the_library_imports_no_pipeline_code():
    offenders = {m: sorted(i for i in imports(m) if i.startswith("tempstop_pipelines"))
                 for m in all_modules() if m.startswith("tempstop.")}  # fmt: skip
    assert {m: i for m, i in offenders.items() if i} == {}


def test_no_stage_imports_the_flow_layer():
    stages = [m for m in all_modules() if m.startswith("tempstop_pipelines.stages.")]
    assert len(stages) > 10
    for stage in stages:
        flows = sorted(m for m in reachable(stage) if m.startswith("tempstop_pipelines.flows"))
        assert flows == [], stage


def test_the_graph_sees_lazy_and_relative_imports():
    # A test that cannot fail is worse than none: the analysis must see function-level
    # imports (train-phase imports the trainer inside main) and relative ones.
    assert "tempstop_pipelines.training.run" in imports("tempstop_pipelines.stages.train_phase")
    assert "tempstop.training.trainer" in reachable("tempstop_pipelines.stages.train_phase")
    assert "tempstop_pipelines.options" in imports("tempstop_pipelines.stages.extract")


def _environ_writes(module: str) -> list[str]:
    """``os.environ`` changes in a module's source (assignments, update/setdefault/pop)."""
    from code_graph import module_file

    def is_environ(node) -> bool:
        return isinstance(node, ast.Attribute) and node.attr == "environ"

    changers = {"update", "setdefault", "pop", "__setitem__"}
    found = []
    for node in ast.walk(ast.parse(module_file(module).read_text())):
        if isinstance(node, (ast.Assign, ast.Delete)):
            for target in getattr(node, "targets", []):
                if isinstance(target, ast.Subscript) and is_environ(target.value):
                    found.append(f"line {node.lineno}")
        elif isinstance(node, ast.Call) and _calls_environ(node, changers):
            found.append(f"line {node.lineno}: environ.{node.func.attr}")
    return found


def _calls_environ(node, methods: set[str]) -> bool:
    func = node.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr in methods
        and getattr(func.value, "attr", None) == "environ"
    )


def test_no_environment_variable_is_an_internal_channel():
    # Stage and pipeline tags travel as arguments; the only variables set are telemetry
    # switches (off) for the libraries this process imports.
    telemetry_only = {"tempstop_pipelines.env"}  # telemetry_off(), called by the CLI at start
    writes = {m: _environ_writes(m) for m in all_modules() if m not in telemetry_only}
    assert {m: w for m, w in writes.items() if w} == {}
    assert _environ_writes("tempstop_pipelines.env")  # the check sees a write where there is one


def test_inference_search_and_serving_do_not_depend_on_training():
    # Search and serving load models and embed with tempstop.inference, which sits below both
    # training and collection: nothing they run may import tempstop.training (transitively).
    users = [m for m in all_modules() if m.startswith(("tempstop.collection", "tempstop.inference",
                                                       "tempstop_pipelines.serve"))]  # fmt: skip
    assert len(users) > 10
    leaks = {m: sorted(r for r in reachable(m) if r.startswith("tempstop.training")) for m in users}
    assert {m: r for m, r in leaks.items() if r} == {}
    # The analysis sees such an import where there is one.
    assert "tempstop.training.trainer" in reachable("tempstop_pipelines.training.run")
