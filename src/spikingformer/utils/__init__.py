"""What every layer of the package may use: files written atomically (JSON, CSV, figures) and progress bars."""
