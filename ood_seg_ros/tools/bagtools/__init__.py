"""
Bags and the live node process: offline engine, live replay, player, reports.

* :mod:`.offline`: run the Pipeline over a bag's frames, write the output bag;
* :mod:`.live`: replay a bag through an ``ood_node`` process over DDS (parent side and
  the child process that runs the player);
* :mod:`.player`: the rclpy publisher / recorder of the live replay;
* :mod:`.node_process`: the one way of starting and stopping an ``ood_node`` process
  (command line, isolation, readiness, interrupt / stop, log tail);
* :mod:`.report`: metrics of output bags, timing summaries, diagnostics, overlays.
"""
