"""Remember every recipient's outcome, so that a rerun resumes and nobody is mailed twice;
read it back for `status`."""
