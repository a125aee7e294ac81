"""The replicated state: tables, indexes, watches, and the FSM that writes them."""
