"""Pictures of a run: loss curves (`curves`), attention maps (`attention`); PNG via matplotlib."""
