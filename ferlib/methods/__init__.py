"""Training methods, registered by name. ``list_methods()`` lists them; ``create_method(name, ...)`` builds one."""
from .base import (Method, Readout, create_method, list_methods, method_class, method_config, parse_overrides,
                   register_method)
from . import ce, ldl_votes  # noqa: F401  (registration)
from . import nla  # noqa: F401
from . import lanet  # noqa: F401
from . import ldlva  # noqa: F401
from . import rul, scn  # noqa: F401  (scn and rul share ferlib.methods.relabel)
from . import elr, gce, sce  # noqa: F401  (generic noisy-label losses)
from . import dmue  # noqa: F401  (dmue_parts holds its equations)
from . import eac  # noqa: F401

__all__ = ["Method", "Readout", "create_method", "list_methods", "method_class", "method_config", "parse_overrides",
           "register_method"]
