"""Framework adapters, imported as ``grm_plugin.adapters.<framework>``; each imports its
framework lazily."""
