"""Root pytest configuration: skip the doctests of optional integrations whose package is missing."""

import importlib.util

collect_ignore_glob = []
if importlib.util.find_spec("lightning") is None and importlib.util.find_spec("pytorch_lightning") is None:
    collect_ignore_glob.append("src/equiproj/integrations/lightning.py")
