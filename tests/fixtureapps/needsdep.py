"""An app module whose import fails: it needs a package that is installed nowhere."""

import gs_not_installed_anywhere  # noqa: F401

app = None
