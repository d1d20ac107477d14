"""The rclpy node ``ood_node``: parameters, outputs, diagnostics and the node itself."""
