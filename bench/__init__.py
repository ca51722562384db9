"""`agft bench`: policies over request traces on the simulated node, in virtual time.

Every window goes through the agent's measurement code and the server's decision code
(`server.fleet.decider.decide_window`), so a benchmark number is what the product
would do on the simulated GPU, not what a copy of its logic would do.
"""
