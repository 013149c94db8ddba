print("dualreplay")
