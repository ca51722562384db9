"""`agft loadtest`: one server process against many lightweight simulated agents."""
