"""Engine state behind one interface: SQLite by default (``sqlite``), Firestore in production."""
