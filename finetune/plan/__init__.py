"""The run plan (what a launcher executes), how it is built from a composed config, how it is shown, and the typed results stages hand on."""
