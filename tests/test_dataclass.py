"""`hydrallm.dataclass.dataclass` (made without compiling most methods, for a faster start)
makes classes that behave as the standard decorator's: each shape below is defined with
both, and everything a caller can see of them is compared."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
import sys
import types
from collections.abc import Callable
from dataclasses import KW_ONLY, InitVar, field
from typing import Any, ClassVar

import pytest

from hydrallm import dataclass as fastmod
from hydrallm.dataclass import dataclass as fast

std = dataclasses.dataclass
Deco = Callable[..., Any]

# Pickling finds a class by its module and qualified name: each decorator's classes are
# published under a name of their own (set by `_shapes`).
PICKLED = types.SimpleNamespace()


def _shapes(dc: Deco, tag: str) -> dict[str, type]:
    @dc(frozen=True, slots=True)
    class FrozenSlots:
        host: str
        port: int = 8080
        tags: tuple[str, ...] = ()
        extra: dict[str, int] = field(default_factory=dict, compare=False, hash=False)

    @dc(slots=True)
    class Slots:
        name: str
        items: list[int] = field(default_factory=list)
        secret: str = field(default="", repr=False)
        total: ClassVar[int] = 0

    @dc(eq=False, slots=True)
    class NoEq:
        value: float = 0.0

    @dc(frozen=True)
    class Frozen:
        """Kept: a docstring of its own."""

        a: int
        b: str = "x"
        c: float = field(default=1.5, hash=True, compare=False)

    @dc
    class Plain:
        a: int = 0
        _: KW_ONLY
        b: int = 1
        c: list[str] = field(default_factory=list)

    @dc()
    class PostInit:
        a: int
        scale: InitVar[int] = 2
        doubled: int = field(init=False, default=0)

        def __post_init__(self, scale: int) -> None:
            self.doubled = self.a * scale

    @dc(frozen=True, slots=True)
    class Empty:
        pass

    @dc(slots=True)
    class One:
        only: float

    @dc(frozen=True)
    class Own:
        a: int

        def __repr__(self) -> str:
            return "own"

        def __eq__(self, other: object) -> bool:
            return True

        def __hash__(self) -> int:
            return 7

    @dc
    class OwnEq:
        a: int

        def __eq__(self, other: object) -> bool:
            return False

    @dc(kw_only=True, slots=True, weakref_slot=True)
    class KwWeak:
        a: int
        self: str = "me"  # a field named "self": __init__'s first parameter is renamed

    @dc(order=True, frozen=True)
    class Ordered:
        a: int
        b: int = 0

    @dc(frozen=True)
    class Child(Frozen):
        d: int = 4

    @dc(unsafe_hash=True)
    class Unsafe:
        a: int = 1

    @dc
    class Node:
        child: Any = None

    out = {k: v for k, v in locals().items() if isinstance(v, type)}
    for name, cls in out.items():
        cls.__qualname__ = f"PICKLED.{tag}{name}"  # pickle looks it up there
        setattr(PICKLED, tag + name, cls)
    return out


SHAPES = {"std": _shapes(std, "std"), "fast": _shapes(fast, "fast")}

ARGS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "FrozenSlots": (("h",), {"tags": ("a",), "extra": {"x": 1}}),
    "Slots": (("n", [1, 2]), {"secret": "s3cr3t"}),
    "NoEq": ((2.5,), {}),
    "Frozen": ((1, "y"), {"c": 2.0}),
    "Plain": ((3,), {"b": 4, "c": ["z"]}),
    "PostInit": ((5,), {"scale": 3}),
    "Empty": ((), {}),
    "One": ((float("nan"),), {}),
    "Own": ((1,), {}),
    "OwnEq": ((1,), {}),
    "KwWeak": ((), {"a": 1, "self": "x"}),
    "Ordered": ((1, 2), {}),
    "Child": ((1,), {"d": 9}),
    "Unsafe": ((2,), {}),
    "Node": ((), {}),
}


def _outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    try:
        value = fn()
    except Exception as exc:  # the exception's type and text are what is compared
        return ("raises", (type(exc).__name__, str(exc).replace("fast", "std")))
    return ("returns", value)


def _observe(tag: str, name: str) -> dict[str, Any]:
    cls = SHAPES[tag][name]
    args, kwargs = ARGS[name]
    a, b = cls(*args, **kwargs), cls(*args, **kwargs)
    other_kind = SHAPES[tag]["Plain"]()
    seen: dict[str, Any] = {
        "doc": cls.__doc__,
        "signature": str(inspect.signature(cls)),
        "params": repr(cls.__dataclass_params__),
        "fields": [
            (f.name, f.type, f.default, f.default_factory, f.init, f.repr, f.hash, f.compare)
            for f in dataclasses.fields(cls)
        ],
        "match_args": getattr(cls, "__match_args__", None),
        "slots": getattr(cls, "__slots__", None),
        "has_dict": hasattr(a, "__dict__"),
        "repr": repr(a),
        "eq_same": a == b,
        "eq_self": a == a,
        "ne": a != b,
        "eq_other_class": a == other_kind,
        "eq_not_implemented": _outcome(lambda: type(a).__eq__(a, 1)),
        "hash_attr": cls.__dict__.get("__hash__", "inherited") is None,
        # By identity (a class without __eq__), or the value: compared as such.
        "hash": _outcome(lambda: "identity" if hash(a) == object.__hash__(a) else hash(a)),
        "hash_equal": _outcome(lambda: hash(a) == hash(b)),
        "set_field": _outcome(lambda: setattr(a, dataclasses.fields(cls)[0].name, 0))
        if dataclasses.fields(cls)
        else None,
        "set_new": _outcome(lambda: setattr(a, "zz", 1)),
        "del_new": _outcome(lambda: delattr(a, "zz")),
        "replace": _outcome(lambda: repr(dataclasses.replace(b))),
        "asdict": _outcome(lambda: dataclasses.asdict(b)),
        "astuple": _outcome(lambda: dataclasses.astuple(b)),
        "copy": _outcome(lambda: repr(copy.deepcopy(b))),
        "pickle": _outcome(lambda: repr(pickle.loads(pickle.dumps(b)))),
        "methods": {
            m: (getattr(cls, m).__qualname__, getattr(cls, m).__module__)
            for m in ("__init__", "__repr__", "__eq__", "__setattr__", "__delattr__", "__hash__")
            if callable(cls.__dict__.get(m))
        },
        "init": (
            cls.__init__.__annotations__,
            cls.__init__.__defaults__,
            cls.__init__.__kwdefaults__,
            cls.__init__.__code__.co_varnames[: cls.__init__.__code__.co_argcount],
        ),
        "dict_keys": sorted(k for k in cls.__dict__ if k not in ("__doc__",)),
        "bad_args": _outcome(lambda: cls(*args, 1, 2, 3, **kwargs)),
        "missing_args": _outcome(lambda: cls()),
    }
    if name in ("Ordered", "Child", "Unsafe"):
        seen["lt"] = _outcome(lambda: a < b)
    return seen


@pytest.mark.parametrize("name", sorted(ARGS))
def test_classes_behave_as_the_standard_ones(name: str) -> None:
    std_seen = _observe("std", name)
    fast_seen = _observe("fast", name)
    for key in std_seen:
        expected, got = std_seen[key], fast_seen[key]
        assert repr(got).replace("fast", "std") == repr(expected), key


def test_a_recursive_repr_says_so() -> None:
    for tag in ("std", "fast"):
        node = SHAPES[tag]["Node"]()
        node.child = node
        assert repr(node) == f"PICKLED.{tag}Node(child=...)"


def test_a_nan_field_compares_as_the_standard_one() -> None:
    # Python 3.11/3.12 compare tuples, where the same NaN object equals itself.
    nan = float("nan")

    def compare(tag: str) -> tuple[bool, bool]:
        one = SHAPES[tag]["One"]
        return one(nan) == one(nan), one(nan) == one(float("nan"))

    assert compare("fast") == compare("std")


def test_hash_values_are_the_standard_ones() -> None:
    # Same hash values: sets and dicts of them iterate in the same order as before.
    f_std, f_fast = SHAPES["std"]["Frozen"](1, "y", 2.0), SHAPES["fast"]["Frozen"](1, "y", 2.0)
    assert hash(f_std) == hash(f_fast) == hash((1, "y", 2.0))
    e_std, e_fast = SHAPES["std"]["Empty"](), SHAPES["fast"]["Empty"]()
    assert hash(e_std) == hash(e_fast) == hash(())


def test_an_undefinable_class_is_refused_alike() -> None:
    def define(dc: Deco, body: dict[str, Any]) -> tuple[str, Any]:
        return _outcome(lambda: dc(type("Bad", (), body)))

    bodies: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"__annotations__": {"a": "int", "b": "int"}, "a": 1}, {}),  # b follows a default
        ({"__annotations__": {"a": "list[int]"}, "a": []}, {}),  # mutable default
        ({"__annotations__": {"a": "int"}, "__setattr__": lambda s, n, v: None}, {"frozen": True}),
        ({"__annotations__": {}, "x": field(default=1)}, {}),  # a field without a type
    ]
    for body, kwargs in bodies:
        assert define(fast(**kwargs), dict(body)) == define(std(**kwargs), dict(body))


def test_the_fast_path_is_taken_where_it_applies() -> None:
    """On 3.11/3.12 the covered shapes compile no method but `__init__` (no `__repr__` of
    its own source): the point of the module.  Elsewhere it is the standard decorator."""
    cls = SHAPES["fast"]["FrozenSlots"]
    closure = cls.__repr__.__wrapped__
    if fastmod.FAST:
        assert closure.__code__.co_filename == fastmod.__file__
    else:
        assert closure.__code__.co_filename == "<string>"


PROBE = '''
from __future__ import annotations
from dataclasses import field
from hydrallm.dataclass import dataclass

@dataclass(frozen=True, slots=True)
class Point:
    """Documented: compiled when first used."""
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)

@dataclass(slots=True)
class Undocumented:
    a: int = 1
'''


def _fresh_module() -> types.ModuleType:
    """A module of classes defined just now (none instantiated yet)."""
    module = types.ModuleType("hydrallm_lazy_probe")
    sys.modules[module.__name__] = module
    try:
        exec(PROBE, module.__dict__)
    finally:
        del sys.modules[module.__name__]
    return module


@pytest.mark.skipif(not fastmod.FAST, reason="the standard decorator compiles at once")
def test_init_is_compiled_at_first_use_or_when_asked() -> None:
    module = _fresh_module()
    point = module.Point
    stub = point.__dict__["__init__"]
    assert stub.__code__.co_filename == fastmod.__file__  # not compiled yet
    assert point.__init__.__qualname__ == "Point.__init__"
    # The docstring the decorator writes (the signature) is written without compiling.
    undocumented = module.Undocumented
    assert undocumented.__doc__ == "Undocumented(a: 'int' = 1)"
    assert undocumented.__dict__["__init__"].__code__.co_filename == fastmod.__file__

    p = point(1, tags=["a"])  # the first call compiles, installs, and initialises
    assert (p.x, p.y, p.tags) == (1, 0, ["a"])
    compiled = point.__dict__["__init__"]
    assert compiled is not stub
    assert compiled.__code__.co_filename == "<string>"
    assert compiled.__qualname__ == "Point.__init__"
    assert point(2) == point(2, 0, [])
    assert point.__dict__["__init__"] is compiled  # once
    signature = "(x: 'int', y: 'int' = 0, tags: 'list[str]' = <factory>) -> None"
    assert str(inspect.signature(point)) == signature
    with pytest.raises(TypeError, match=r"Point.__init__\(\) missing 1 required positional"):
        point()

    again = _fresh_module()
    assert fastmod.build_pending([again]) == 2
    assert again.Point.__dict__["__init__"].__code__.co_filename == "<string>"
    assert again.Undocumented.__dict__["__init__"].__code__.co_filename == "<string>"
    assert fastmod.build_pending([again]) == 0
    assert again.Point(3).y == 0


@pytest.mark.skipif(not fastmod.FAST, reason="the standard decorator compiles at once")
def test_a_stub_inherited_by_a_plain_subclass_installs_on_its_class() -> None:
    module = _fresh_module()

    class Sub(module.Point):  # type: ignore[misc, name-defined]
        __slots__ = ()

    s = Sub(5, 6)
    assert (s.x, s.y, type(s)) == (5, 6, Sub)
    assert "__init__" not in Sub.__dict__
    assert module.Point.__dict__["__init__"].__code__.co_filename == "<string>"
