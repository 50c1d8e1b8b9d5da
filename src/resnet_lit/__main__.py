from resnet_lit.runs.entry import main

if __name__ == "__main__":
    main()
