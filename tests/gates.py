"""Events a test and the code it drives in another thread share (a template module being
imported, for one): the module imports this one and waits or signals here."""

from __future__ import annotations

import threading

#: Set by a slow template module when its import begins.
IMPORT_BEGAN = threading.Event()
#: What that import waits for before it ends.
IMPORT_MAY_END = threading.Event()
