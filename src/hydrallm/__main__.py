from hydrallm.launch import run

run()
