"""Starting auxipc processes and keeping them running: launching (``launch``)
and OTP-style supervision (``supervisor``)."""
