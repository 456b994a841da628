"""Policy schema parts: shared building blocks (common.py) and one module per method: its pydantic check schema,
its frozen finding dataclasses and how two findings compare (auditor/methods/__init__.py registers them).
Light modules: pydantic and dataclasses only, so the registry imports no numerics."""
