"""Events as they arrive, before the queue: JSON bodies parsed into validated events within
bounds, their problems described, and IHE ATNA audit messages mapped to events. No HTTP here."""
