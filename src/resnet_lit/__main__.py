from resnet_lit.runs.cli import main

if __name__ == "__main__":
    main()
