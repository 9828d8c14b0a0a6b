"""What people read: tables, plots and the files a run writes."""
