"""What only the App and the CLI use: the panel's rows and the plugin's installation."""
