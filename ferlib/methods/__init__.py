"""Training methods, registered by name. ``list_methods()`` lists them; ``create_method(name, ...)`` builds one."""
from .base import Method, create_method, list_methods, method_class, parse_overrides, register_method
from . import ce, ldl_votes  # noqa: F401  (registration)

__all__ = ["Method", "create_method", "list_methods", "method_class", "parse_overrides", "register_method"]
