"""What people read: leaderboard tables, the data of the dvc plots, the offline plots page."""
