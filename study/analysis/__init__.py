"""A study's results read back and analysed: tables, fronts, hypervolume, importance and score agreement
(computed without Plotly), and the report's views and page (Plotly). No torch, no Ray."""
