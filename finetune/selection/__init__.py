"""Selection: the metric functions, decision rules, the AutoML candidate and the choice of what ships."""
