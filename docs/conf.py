project = "txconsul"
author = "the txconsul developers"
extensions: list[str] = []
master_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
