"""Every numeric setting is range- and type-checked, by its constructor's annotation, before anything is built or written."""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hydra.utils import get_object

from ssl_train.constraints import FieldsOf
from ssl_train.errors import UserError
from ssl_train.run import run
from ssl_train.validate import THIRD_PARTY_RULES, is_rule, validate
from tests.fixtures import CONFIG_DIR, compose_config

METHODS = sorted(p.stem for p in (CONFIG_DIR / "method").glob("*.yaml"))  # every method there is, none listed by hand


@pytest.mark.parametrize("method", METHODS)
def test_every_method_default_config_is_valid(tmp_path: Path, method: str) -> None:
    validate(compose_config([f"method={method}"], tmp_path, tiny=False))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.optimizer.lr=-1", r"optim.optimizer.lr=-1: must be a finite number in \(0, 100\]"),
        ("optim.optimizer.lr=nan", r"optim.optimizer.lr=nan: must be a finite number in \(0, 100\]"),
        ("optim.optimizer.weight_decay=null", r"optim.optimizer.weight_decay=None: must be a value \(not null\)"),
        ("data.batch_size=0", r"data.batch_size=0: must be an integer >= 1"),
        ("data.num_workers=0.5", r"data.num_workers=0.5: must be an integer >= 0"),
        ("trainer.max_epochs=1e12", r"trainer.max_epochs=1000000000000.0: must be an integer >= 1"),
        ("trainer.accumulate_grad_batches=abc", r"trainer.accumulate_grad_batches='abc': must be an integer >= 1"),
        ("loss.temperature=0", r"loss.temperature=0: must be a finite number in \(0, 100\]"),
        ("seed=-1", r"seed=-1 \(from \$\{seed\}\): must be an integer in \[0, 4.29497e\+09\]"),  # read first where a probe interpolates it
        ("augment.recipe.crop_scale=[0.9,0.2]", r"crop_scale=\[0.9, 0.2\]: must be a pair \[low, high\] with low <= high, each a finite number in \(0, 1\]"),
        ("backbone.widths=[]", r"backbone.widths=\[\]: must be a non-empty list, each item an integer >= 1"),
        ("eval.linear.l2_grid=[0.001,-1]", r"eval.linear.l2_grid=\[0.001, -1\]: must be a non-empty list, each item a finite number in \[0, 1e\+06\]"),
        ("eval.knn.k=[20,0]", r"eval.knn.k=\[20, 0\]: must be an integer >= 1 or a list of them"),
        ("trainer.limit_train_batches=1.5", r"trainer.limit_train_batches=1.5: must be an integer >= 0 \(batches\) or a fraction in \[0, 1\]"),
    ],
)
def test_bad_numbers_stop_before_the_run_directory_exists(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        run(compose_config([override], tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_method_specific_keys_are_checked(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"method.queue.size=0: must be an integer >= 1"):
        validate(compose_config(["method=mocov2", "method.queue.size=0"], tmp_path))
    with pytest.raises(UserError, match=r"method.momentum_base=1.5: must be a finite number in \[0, 1\]"):
        validate(compose_config(["method=byol", "method.momentum_base=1.5"], tmp_path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["method=tico", "loss.beta=1.5"], r"^loss.beta=1.5: must be a finite number in \[0, 1\]$"),  # from TiCoLoss's `beta: Fraction`
        (["method=tico", "head.out_dim=null"], r"^loss.dim=None \(from \$\{head.out_dim\}\): must be a value \(not null\)$"),
        (["method=ijepa", "method.min_keep=-1"], r"^method.min_keep=-1: must be an integer >= 0$"),
        (["method=swav", "method.num_prototypes=0"], r"^method.num_prototypes=0: must be an integer >= 1$"),
        (["method=ibot", "method.mask_ratio_range=[0.5,0.1]"], r"^method.mask_ratio_range=\[0.5, 0.1\]: must be a pair \[low, high\] with low <= high"),
        (["method=dinov2", "method.mask_ratio_range=[0.1,1.0]"], r"^method.mask_ratio_range=\[0.1, 1.0\]: .* each a finite number in \[0, 1\)$"),
        (["eval=[low_shot]", "eval.low_shot.shots=[1,0]"], r"^eval.low_shot.shots=\[1, 0\]: must be a non-empty list, each item an integer >= 1$"),
        (["eval=[image_retrieval]", "eval.image_retrieval.ks=[]"], r"^eval.image_retrieval.ks=\[\]: must be a non-empty list, each item an integer >= 1$"),
    ],
)
def test_rules_come_from_the_constructors_annotations(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        validate(compose_config(overrides, tmp_path))


def test_a_key_the_constructor_does_not_take_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(
        UserError,
        match=r"^method.momentum: unknown setting; ssl_train.methods.SiameseMethod takes backbone, loss, name, "
        r"num_global_views, per_view_bn, projector$",
    ):
        validate(compose_config(["+method.momentum=0.9"], tmp_path))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.hard_negative_beta=-1"], r"loss.hard_negative_beta=-1: must be a finite number >= 0"),
        (["data.m_per_class=0"], r"data.m_per_class=0: must be an integer >= 1"),
        (["method=simcse", "tokenizer.max_length=2"], r"tokenizer.max_length=2: must be an integer >= 3"),
        (["method=simcse", "augment=text_eda", "augment.recipe.delete_prob=1.5"], r"augment.recipe.delete_prob=1.5: must be a finite number in \[0, 1\]"),
        (["method=clip", "loss.init_temperature=0"], r"loss.init_temperature=0: must be a finite number in \(0, 100\]"),
        (
            ["method=clip", "data=caption_folder", "data.source.root=x", "data.source.test_fraction=1"],
            r"data.source.test_fraction=1: must be a finite number in \(0, 1\)",
        ),
    ],
)
def test_text_and_image_text_keys_are_checked_before_anything_is_built(overrides: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        validate(compose_config(overrides, tmp_path))


def test_absurd_but_typed_values_that_would_train_silently_wrong_are_refused_or_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    validate(compose_config(["optim.warmup_epochs=50", "trainer.max_epochs=12"], tmp_path))
    assert "optim.warmup_epochs=50 is longer than trainer.max_epochs=12: the learning rate never leaves warm-up" in caplog.text
    with pytest.raises(UserError, match=r"loss.temperature=1000000000000.0: must be a finite number in \(0, 100\]"):
        validate(compose_config(["loss.temperature=1e12"], tmp_path))


def test_a_null_head_width_means_the_encoders_but_a_null_predictor_width_is_refused(tmp_path: Path) -> None:
    validate(compose_config(["method=simcse"], tmp_path))  # simcse_mlp: out_dim null, Linear(d, d) as in the reference
    with pytest.raises(UserError, match=r"method.predictor.out_dim=None \(from \$\{head.out_dim\}\): must be a value \(not null\)"):
        validate(compose_config(["method=byol", "head.out_dim=null"], tmp_path))  # the predictor follows ${head.out_dim}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.warmup_epochs=2.5e38"], r"optim.warmup_epochs=2.5e\+38: must be a finite number in \[0, 1000\]"),
        (["optim.warmup_epochs=1e12"], r"optim.warmup_epochs=1000000000000.0: must be a finite number in \[0, 1000\]"),
        (["optim.optimizer.lr=1e12"], r"optim.optimizer.lr=1000000000000.0: must be a finite number in \(0, 100\]"),
        (["optim.online_probe_lr=2.5e38"], r"optim.online_probe_lr=2.5e\+38: must be a finite number in \(0, 100\]"),
        (["optim.optimizer.weight_decay=2.5e38"], r"optim.optimizer.weight_decay=2.5e\+38: must be a finite number in \[0, 10\]"),
        (["optim.weight_decay_end=1e12"], r"optim.weight_decay_end=1000000000000.0: must be a finite number in \[0, 10\]"),
        (["method=barlow_twins", "loss.lambda_offdiag=1e12"], r"loss.lambda_offdiag=1000000000000.0: must be a finite number in \[0, 1000\]"),
        (["method=vicreg", "loss.sim_weight=2.5e38"], r"loss.sim_weight=2.5e\+38: must be a finite number in \[0, 1000\]"),
    ],
)
def test_absurd_magnitudes_are_refused_with_the_allowed_range_before_the_run_directory_exists(tmp_path: Path, overrides: list[str], message: str) -> None:
    """Exponents gone wrong trained before (1e12 warm-up epochs: the LR never rose) or diverged steps later, naming another key."""
    with pytest.raises(UserError, match=message) as caught:
        run(compose_config(overrides, tmp_path / "run"))
    assert "\n" not in str(caught.value) and not (tmp_path / "run").exists()


def test_the_ends_of_the_magnitude_ranges_are_accepted(tmp_path: Path) -> None:
    validate(
        compose_config(
            ["optim.optimizer.lr=100", "optim.optimizer.weight_decay=10", "optim.weight_decay_end=10", "optim.warmup_epochs=1000", "trainer.max_epochs=1000"],
            tmp_path,
        )
    )
    validate(compose_config(["method=vicreg", "loss.sim_weight=1000", "loss.var_weight=0", "loss.cov_weight=1000"], tmp_path))


# numeric constructor parameters of our own components that carry no constraint, each with the reason
UNCHECKED_NUMBERS: dict[tuple[str, str], str] = {
    **{
        (f"ssl_train.heads.{head}", "in_dim"): "filled in by the method from the encoder's width, never a setting"
        for head in ("DINOHead", "IdentityHead", "MLP", "MutualInformationNet", "StepPredictions")
    },
    ("ssl_train.methods.DeepInfoMaxMethod", "local_stage"): "a stage index: any int, negative ones count from the last",
    ("ssl_train.tracking.trackers.AppendingCSVLogger", "flush_logs_every_n_steps"): "Lightning's CSVLogger constructor, inherited",
}


def _is_number(hint: Any) -> bool:
    """Whether a (possibly Annotated, possibly optional) type hint is int or float."""
    base = typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint
    union = typing.get_origin(base) in (typing.Union, types.UnionType)
    kinds = [a for a in typing.get_args(base) if a is not type(None)] if union else [base]
    return all(k in (int, float) for k in kinds)


def _numeric_parameters() -> Iterator[tuple[str, str, Any]]:
    """(component, parameter, hint) of every int/float parameter of our own components that configs/ name, and of the
    fields of the recipes their FieldsOf parameters take."""
    targets = {t for p in CONFIG_DIR.rglob("*.yaml") for t in re.findall(r"_target_:\s*(ssl_train\.[\w.]+)", p.read_text())}
    for target in sorted(targets):
        component = get_object(target)
        hints = typing.get_type_hints(component.__init__ if inspect.isclass(component) else component, include_extras=True)
        owners = [(target, hints)] + [
            (f"{m.recipe.__module__}.{m.recipe.__qualname__}", typing.get_type_hints(m.recipe, include_extras=True))
            for h in hints.values()
            for m in getattr(h, "__metadata__", ())
            if isinstance(m, FieldsOf)
        ]
        for owner, owner_hints in owners:
            yield from ((owner, name, hint) for name, hint in owner_hints.items() if name != "return" and _is_number(hint))


def test_every_numeric_parameter_of_our_components_has_a_constraint_or_a_reason() -> None:
    """A new int/float parameter without a rule (an annotation from ssl_train/constraints.py) fails here, not in a run."""
    found = list(_numeric_parameters())
    assert len(found) > 100  # the walk found the components (a broken regex would pass vacuously)
    missing = [
        f"{owner}.{name}: {hint}"
        for owner, name, hint in found
        if (owner, name) not in UNCHECKED_NUMBERS and not any(is_rule(m) for m in getattr(hint, "__metadata__", ()))
    ]
    assert not missing, "annotate these with a constraint (ssl_train/constraints.py) or list them in UNCHECKED_NUMBERS with a reason:\n" + "\n".join(missing)
    stale = set(UNCHECKED_NUMBERS) - {(owner, name) for owner, name, _ in found}
    assert not stale, f"UNCHECKED_NUMBERS names parameters that no longer exist: {sorted(stale)}"


def test_third_party_rules_name_parameters_their_classes_take() -> None:
    """THIRD_PARTY_RULES is keyed by class: each of its settings must still be a parameter of that class."""
    for component, rules in THIRD_PARTY_RULES.items():
        assert set(rules) <= set(inspect.signature(component).parameters), component
