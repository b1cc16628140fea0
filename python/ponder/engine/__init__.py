"""The engine: model runner, scheduler and step loop."""
