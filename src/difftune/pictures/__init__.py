"""Pictures: image grids, panels, progression and schedule plots."""
