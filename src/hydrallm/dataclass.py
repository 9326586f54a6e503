"""`dataclass`: the standard library's, made without compiling five methods of six.

`hydrallm serve` defines ~65 dataclasses before it listens, and on Python 3.11/3.12 the
standard `dataclasses.dataclass` writes the source of each generated method (`__init__`,
`__repr__`, `__eq__`, `__hash__`, a frozen class's `__setattr__` / `__delattr__`) and
compiles it with one `exec` apiece: ~300 compilations, a fifth of the instructions to
ready.  Here the standard decorator still collects and checks the fields and adds the
slots; `__repr__`, `__eq__`, `__hash__` and the frozen methods are closures over the field
names with the same results (the same tuples compared and hashed, the same repr text, the
same errors, even 3.11's TypeError for a new attribute on a frozen slotted class); and
`__init__` is compiled when the class is first instantiated (or by `build_pending`, which
`serve` runs once it listens), from shorter source than the standard one but with the
same parameters, defaults, annotations and effects.  Until then a class's `__init__` is
a stub taking `(self, /, *args, **kwargs)`: only `inspect.signature` can tell.

A class this does not cover (ordering, `unsafe_hash`, dataclass bases) and every class
on Python 3.13+ (whose dataclasses compile once a class) gets the standard decorator.
Type checkers see `dataclasses.dataclass` itself.  `tests/test_dataclass.py` compares
the two on every shape the code uses.
"""

from __future__ import annotations

import abc
import dataclasses as _dc
import inspect
import sys
from collections.abc import Callable, Iterable
from operator import attrgetter
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["build_pending", "dataclass"]

FAST = (3, 11) <= sys.version_info < (3, 13)


def _dataclass(
    cls: type | None = None,
    /,
    *,
    init: bool = True,
    repr: bool = True,
    eq: bool = True,
    order: bool = False,
    unsafe_hash: bool = False,
    frozen: bool = False,
    match_args: bool = True,
    kw_only: bool = False,
    slots: bool = False,
    weakref_slot: bool = False,
) -> Any:
    def wrap(cls: type) -> type:
        if not FAST or order or unsafe_hash or _has_dataclass_base(cls):
            return _dc.dataclass(
                cls,
                init=init,
                repr=repr,
                eq=eq,
                order=order,
                unsafe_hash=unsafe_hash,
                frozen=frozen,
                match_args=match_args,
                kw_only=kw_only,
                slots=slots,
                weakref_slot=weakref_slot,
            )
        return _process(cls, init, repr, eq, frozen, match_args, kw_only, slots, weakref_slot)

    return wrap if cls is None else wrap(cls)


def _has_dataclass_base(cls: type) -> bool:
    return any(hasattr(b, "__dataclass_fields__") for b in cls.__mro__[1:])


def _process(
    cls: type,
    init: bool,
    repr: bool,
    eq: bool,
    frozen: bool,
    match_args: bool,
    kw_only: bool,
    slots: bool,
    weakref_slot: bool,
) -> type:
    # The standard decorator collects the fields, checks them, sets `__match_args__` and
    # the slots; it is kept from generating methods (and from the docstring, which needs
    # `__init__`: a placeholder it leaves alone, replaced below).
    needs_doc = not cls.__doc__
    if needs_doc:
        cls.__doc__ = "-"
    user = cls
    class_hash = cls.__dict__.get("__hash__", _dc.MISSING)
    explicit_hash = not (
        class_hash is _dc.MISSING or (class_hash is None and "__eq__" in cls.__dict__)
    )
    cls = _dc.dataclass(
        cls,
        init=False,
        repr=False,
        eq=False,
        frozen=False,
        match_args=match_args,
        kw_only=kw_only,
        slots=slots,
        weakref_slot=weakref_slot,
    )
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    params.init, params.repr, params.eq, params.frozen = init, repr, eq, frozen
    fields: dict[str, Any] = cls.__dataclass_fields__  # type: ignore[attr-defined]
    module = sys.modules.get(cls.__module__)
    globals_ = module.__dict__ if module is not None else {}
    if init:
        all_init = [f for f in fields.values() if f._field_type in (_dc._FIELD, _dc._FIELD_INITVAR)]  # type: ignore[attr-defined]
        std, kw = _dc._fields_in_init_order(all_init)  # type: ignore[attr-defined]
        self_name = "__dataclass_self__" if "self" in fields else "self"
        has_post_init = hasattr(cls, "__post_init__")
        _check_defaults(std)

        def build() -> Callable[..., None]:
            return _init_fn(all_init, std, kw, frozen, has_post_init, self_name, globals_, slots)

        # Compiled when first called (or by `build_pending`).
        _set(cls, "__init__", _lazy_init(cls, build))
    names = [f.name for f in fields.values() if f._field_type is _dc._FIELD]  # type: ignore[attr-defined]
    field_list = [fields[n] for n in names]
    if repr:
        _set(cls, "__repr__", _dc._recursive_repr(_repr([f.name for f in field_list if f.repr])))  # type: ignore[attr-defined]
    if eq:
        _set(cls, "__eq__", _eq(_tuple_of([f.name for f in field_list if f.compare])))
    if frozen:
        if slots:
            # As the standard decorator does for a frozen slotted class (pickling).
            for name, method in (
                ("__getstate__", _dc._dataclass_getstate),  # type: ignore[attr-defined]
                ("__setstate__", _dc._dataclass_setstate),  # type: ignore[attr-defined]
            ):
                if name not in cls.__dict__:
                    setattr(cls, name, method)
        # The standard methods name the class as it was before the slots were added.
        for fn in _frozen(user, frozenset(names)):
            if _set(cls, fn.__name__, fn):
                raise TypeError(f"Cannot overwrite attribute {fn.__name__} in class {cls.__name__}")
    if eq and not explicit_hash:
        if frozen:
            hashed = [f.name for f in field_list if (f.compare if f.hash is None else f.hash)]
            cls.__hash__ = _hash(_tuple_of(hashed), cls)  # type: ignore[assignment]
        else:
            cls.__hash__ = None  # type: ignore[assignment]
    if needs_doc:
        if init and _plain_construction(cls):
            # What `inspect.signature` says of the `__init__` not compiled yet.
            text_sig = _signature_text(std, kw)
        else:
            try:
                text_sig = str(inspect.signature(cls)).replace(" -> None", "")
            except (TypeError, ValueError):
                text_sig = ""
        cls.__doc__ = cls.__name__ + text_sig
    abc.update_abstractmethods(cls)
    return cls


def _plain_construction(cls: type) -> bool:
    """Whether `cls(...)` is its generated `__init__` alone (no `__new__`, no metaclass
    `__call__`), which is what its signature then shows."""
    return (
        getattr(cls.__dict__.get("__init__"), "__dataclass_build__", None) is not None
        and cls.__new__ is object.__new__  # type: ignore[comparison-overlap]
        and type(cls).__call__ is type.__call__
    )


def _signature_text(std: tuple[Any, ...], kw: tuple[Any, ...]) -> str:
    """`str(inspect.signature(cls))` for the generated `__init__`, " -> None" removed as
    the standard decorator removes it."""
    params = [_param_text(f) for f in std]
    if kw:
        params += ["*", *(_param_text(f) for f in kw)]
    return f"({', '.join(params)}) -> None".replace(" -> None", "")


def _param_text(f: Any) -> str:
    text = f"{f.name}: {inspect.formatannotation(f.type)}"
    if f.default is not _dc.MISSING:
        return f"{text} = {f.default!r}"
    if f.default_factory is not _dc.MISSING:
        return f"{text} = {_dc._HAS_DEFAULT_FACTORY!r}"  # type: ignore[attr-defined]
    return text


def _init_fn(
    fields: list[Any],
    std: tuple[Any, ...],
    kw: tuple[Any, ...],
    frozen: bool,
    has_post_init: bool,
    self_name: str,
    globals_: dict[str, Any],
    slots: bool,
) -> Callable[..., None]:
    """The standard `__init__`: the same parameters, defaults, annotations, assignments
    and `__post_init__` call, from a third less source (parsing is most of the cost):
    the defaults and annotations are set on the function instead of being compiled."""
    missing = _dc.MISSING
    locals_: dict[str, Any] = {
        "__dataclass_setattr__": object.__setattr__,
        "__dataclass_HAS_DEFAULT_FACTORY__": _dc._HAS_DEFAULT_FACTORY,  # type: ignore[attr-defined]
    }
    lines = []
    for f in fields:
        default = f"__dataclass_dflt_{f.name}__"
        if f.default_factory is not missing:
            locals_[default] = f.default_factory
            value = (
                f"{default}() if {f.name} is __dataclass_HAS_DEFAULT_FACTORY__ else {f.name}"
                if f.init
                else f"{default}()"
            )
        elif f.init:
            value = f.name
        elif slots and f.default is not missing:
            locals_[default] = f.default  # (a slotted class keeps no default of its own)
            value = default
        else:
            continue  # read from the class attribute
        if f._field_type is _dc._FIELD_INITVAR:  # type: ignore[attr-defined]
            continue
        if frozen:
            lines.append(f"__dataclass_setattr__({self_name},{f.name!r},{value})")
        else:
            lines.append(f"{self_name}.{f.name}={value}")
    if has_post_init:
        initvars = ",".join(f.name for f in fields if f._field_type is _dc._FIELD_INITVAR)  # type: ignore[attr-defined]
        lines.append(f"{self_name}.__post_init__({initvars})")
    params = [self_name, *(f.name for f in std)]
    if kw:
        params += ["*", *(f.name for f in kw)]
    body = "".join(f"  {line}\n" for line in lines or ["pass"])
    text = f"def __create_fn__({', '.join(locals_)}):\n def __init__({','.join(params)}):\n{body} return __init__"
    ns: dict[str, Any] = {}
    exec(text, globals_, ns)
    fn: Any = ns["__create_fn__"](**locals_)
    fn.__defaults__ = tuple(_default(f) for f in std if _has_default(f)) or None
    fn.__kwdefaults__ = {f.name: _default(f) for f in kw if _has_default(f)} or None
    fn.__annotations__ = {**{f.name: f.type for f in (*std, *kw)}, "return": None}
    return fn  # type: ignore[no-any-return]


def _has_default(f: Any) -> bool:
    return f.default is not _dc.MISSING or f.default_factory is not _dc.MISSING


def _default(f: Any) -> Any:
    """A parameter's default: the field's, or the marker of a default factory."""
    return f.default if f.default is not _dc.MISSING else _dc._HAS_DEFAULT_FACTORY  # type: ignore[attr-defined]


def _check_defaults(std: tuple[Any, ...]) -> None:
    """The standard decorator's check (made when it compiles `__init__`, here at once)."""
    seen_default = False
    for f in std:
        if f.init:
            if not (f.default is _dc.MISSING and f.default_factory is _dc.MISSING):
                seen_default = True
            elif seen_default:
                raise TypeError(f"non-default argument {f.name!r} follows default argument")


def _lazy_init(cls: type, build: Callable[[], Callable[..., None]]) -> Callable[..., None]:
    """An `__init__` that puts the compiled one in its place, then calls it."""
    qualname = f"{cls.__qualname__}.__init__"  # as the standard one is named: at definition

    def __init__(self: Any, /, *args: Any, **kwargs: Any) -> None:  # (a field may be `self`)
        _install(cls, __init__)(self, *args, **kwargs)

    __init__.__dataclass_build__ = (build, qualname)  # type: ignore[attr-defined]
    return __init__


def _install(cls: Any, stub: Any) -> Callable[..., None]:
    build, qualname = stub.__dataclass_build__
    current: Callable[..., None] = cls.__dict__["__init__"]
    if current is not stub:
        return current  # installed meanwhile (by another thread, or `build_pending`)
    fn: Callable[..., None] = build()
    fn.__qualname__ = qualname
    fn.__module__ = cls.__module__
    cls.__init__ = fn
    return fn


def build_pending(modules: Iterable[ModuleType]) -> int:
    """Compile the `__init__` of every class of `modules` not yet instantiated: the work
    left for after a start, so that the first requests find them ready.  The number."""
    built = 0
    for module in modules:
        for value in list(vars(module).values()):
            if isinstance(value, type) and value.__module__ == module.__name__:
                init = value.__dict__.get("__init__")
                if hasattr(init, "__dataclass_build__"):
                    _install(value, init)
                    built += 1
    return built


def _set(cls: type, name: str, fn: Any) -> bool:
    """Set a generated method unless the class defines its own (then True)."""
    if name in cls.__dict__:
        return True
    fn.__qualname__ = f"{cls.__qualname__}.{fn.__name__}"
    fn.__module__ = cls.__module__
    setattr(cls, name, fn)
    return False


def _tuple_of(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """The tuple `(obj.a, obj.b, ...)`, as the standard methods build it."""
    if not names:
        return lambda obj: ()
    if len(names) == 1:
        get = attrgetter(names[0])
        return lambda obj: (get(obj),)
    return attrgetter(*names)


def _repr(names: list[str]) -> Callable[[Any], str]:
    def __repr__(self: Any) -> str:
        inner = ", ".join([f"{n}={getattr(self, n)!r}" for n in names])
        return f"{self.__class__.__qualname__}({inner})"

    return __repr__


def _eq(key: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any, Any], Any]:
    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return key(self) == key(other)
        return NotImplemented

    return __eq__


def _hash(key: Callable[[Any], tuple[Any, ...]], cls: type) -> Callable[[Any], int]:
    def __hash__(self: Any) -> int:
        return hash(key(self))

    __hash__.__qualname__ = f"{cls.__qualname__}.__hash__"
    __hash__.__module__ = cls.__module__
    return __hash__


def _frozen(cls: type, names: frozenset[str]) -> tuple[Callable[..., None], ...]:
    error = _dc.FrozenInstanceError
    owner: type[Any] = cls

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise error(f"cannot assign to field {name!r}")
        super(owner, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise error(f"cannot delete field {name!r}")
        super(owner, self).__delattr__(name)

    return __setattr__, __delattr__


if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
else:
    dataclass = _dataclass
